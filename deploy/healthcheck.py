#!/usr/bin/env python3
"""Container health probe (``squid-healthcheck [URL]``): exit 0 when URL answers 200, else 1.

URL defaults to ``$SQUID_HEALTHCHECK_URL``, else ``http://127.0.0.1:$SQUID_PORT/healthz``. Standard
library only, so it runs in every image without curl or wget.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def default_url() -> str:
    explicit = os.environ.get("SQUID_HEALTHCHECK_URL")
    if explicit:
        return explicit
    return f"http://127.0.0.1:{os.environ.get('SQUID_PORT') or '8000'}/healthz"


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else default_url()
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
