"""Dead letters of the node, listed and sent again from the web page (``/node/dead-letters``).

A dead letter is a result the node gave up sending (``<spool>/dead/<destination>/<file>.dcm``, with
its attempt count beside it). Retrying moves it back into the destination's outbox with a fresh
count; the node's send loop picks it up on its next round. ``os.replace`` within one spool is atomic,
so the API process may do it while the node runs. Only names listed here can be moved: a request
never builds a path of its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from service.node.spool import attempts_file, fsync_path


@dataclass(frozen=True)
class DeadLetter:
    destination: str
    name: str
    size: int
    dead_since: str


def list_dead_letters(spool_root: Path) -> list[DeadLetter]:
    dead = spool_root / "dead"
    letters = []
    for path in sorted(dead.glob("*/*.dcm")) if dead.is_dir() else []:
        info = path.stat()
        letters.append(
            DeadLetter(
                destination=path.parent.name,
                name=path.name,
                size=info.st_size,
                dead_since=datetime.fromtimestamp(info.st_mtime, UTC).isoformat(timespec="seconds"),
            )
        )
    return letters


def retry(spool_root: Path, destination: str | None = None, name: str | None = None) -> list[DeadLetter]:
    """Move the dead letters matching ``destination`` / ``name`` (None: any) back to their outbox."""
    moved = []
    for letter in list_dead_letters(spool_root):
        if destination not in (None, letter.destination) or name not in (None, letter.name):
            continue
        source = spool_root / "dead" / letter.destination / letter.name
        target = spool_root / "outbox" / letter.destination / letter.name
        target.parent.mkdir(parents=True, exist_ok=True)
        attempts_file(source).unlink(missing_ok=True)
        try:
            os.replace(source, target)
        except FileNotFoundError:  # retried by another request at the same moment
            continue
        fsync_path(source.parent)
        fsync_path(target.parent)
        moved.append(letter)
    return moved
