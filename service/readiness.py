"""Readiness across the uvicorn worker processes of one ``squid serve``.

``/readyz`` is answered by whichever process accepts the connection. With several workers, one warm
process would report the whole server ready while another still loads its model and answers
``/score`` with 503, so each process drops a marker file named by its pid in a folder shared by the
server (``SQUID_READY_DIR``, created by ``squid serve``) and ``/readyz`` counts the markers of live
processes against ``SQUID_WORKERS``. A worker that dies leaves a stale marker that is not counted;
its replacement adds its own once warm.
"""

from __future__ import annotations

import os
from pathlib import Path

READY_DIR_ENV = "SQUID_READY_DIR"
_PREFIX = "ready-"


def ready_dir() -> Path | None:
    folder = os.environ.get(READY_DIR_ENV)
    return Path(folder) if folder else None


def mark_ready() -> None:
    """Record that this process has warmed its model (no-op outside a multi-worker server)."""
    folder = ready_dir()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{_PREFIX}{os.getpid()}").touch()


def mark_not_ready() -> None:
    folder = ready_dir()
    if folder is not None:
        (folder / f"{_PREFIX}{os.getpid()}").unlink(missing_ok=True)


def ready_processes() -> int:
    """Live processes of this server with a warm model (1 or 0 for this process alone)."""
    folder = ready_dir()
    if folder is None or not folder.is_dir():
        return 0
    return sum(_alive(marker) for marker in folder.glob(f"{_PREFIX}*"))


def _alive(marker: Path) -> bool:
    try:
        os.kill(int(marker.name.removeprefix(_PREFIX)), 0)
    except ValueError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except ProcessLookupError:
        return False
    return True
