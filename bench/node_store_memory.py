"""Peak memory of the DICOM node while it receives one large instance, refused and accepted.

Usage: python bench/node_store_memory.py [--sizes 100 300] [--out bench/results/node_store_memory.json]
Starts ``squid listen`` (in-process scoring, model loaded, no destination), sends one DX instance
of each size with dcmtk's ``storescu``, once with ``SQUID_DICOM_MAX_ASSOCIATION_MB=50`` (refused: the
association is aborted once it passes 50 MB) and once with the default limit (stored), each on a
fresh node, and records the growth of the node's peak resident size (``VmHWM``) over its size before
the send. Received datasets stream to the spool, so the growth stays near a PDU's worth whatever the
instance's size; before streaming a refused 300 MB instance cost the node over 600 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "dicom" / "highdicom" / "dx_image.dcm"
sys.path.insert(0, str(REPO))

from tests.net_support import free_port  # noqa: E402
from tests.node.node_peers import large_instance, peak_rss_mb  # noqa: E402


def measure(work: Path, image: Path, limit_mb: str | None) -> dict[str, object]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUID_")}
    env.update(
        SQUID_DICOM_SPOOL_DIR=str(work / "spool"),
        SQUID_RESULTS_DIR=str(work / "results"),
        SQUID_DICOM_ALLOWED_AES='["STORESCU"]',
        SQUID_INTRA_OP_THREADS="1",
    )
    if limit_mb:
        env["SQUID_DICOM_MAX_ASSOCIATION_MB"] = limit_mb
    log = work / "node.log"
    with log.open("wb") as out:
        node = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "listen", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 180
        while "listening as" not in log.read_text(errors="replace"):
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(log.read_text(errors="replace")[-2000:])
            time.sleep(0.2)
        before = peak_rss_mb(node.pid)
        started = time.monotonic()
        command = ["storescu", "-aet", "STORESCU", "-aec", "SQUID", "127.0.0.1", str(port), str(image)]
        sent = subprocess.run(command, capture_output=True, timeout=900, check=False)
        return {
            "limit_mb": float(limit_mb) if limit_mb else None,
            "stored": sent.returncode == 0,
            "node_peak_before_mb": round(before, 1),
            "node_peak_growth_mb": round(peak_rss_mb(node.pid) - before, 1),
            "send_s": round(time.monotonic() - started, 2),
        }
    finally:
        node.terminate()
        node.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300], help="instance sizes, MB")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "node_store_memory.json")
    args = parser.parse_args()
    if shutil.which("storescu") is None:
        raise SystemExit("needs dcmtk's storescu")
    rows = []
    with tempfile.TemporaryDirectory(prefix="squid-node-bench-") as scratch:
        root = Path(scratch)
        for size in args.sizes:
            image = large_instance(SOURCE, root / f"{size}.dcm", size)
            for limit in ("50", None):
                work = root / f"{size}-{limit or 'default'}"
                work.mkdir()
                row = {"instance_mb": size, **measure(work, image, limit)}
                print(json.dumps(row))
                rows.append(row)
            image.unlink()
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "sender": "dcmtk storescu",
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
