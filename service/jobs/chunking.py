"""Split a walked tree into chunks: the unit of work of one Celery task (a few dozen files).

Chunks are fixed-size slices of the walk order, so the same tree always gives the same chunks and
the in-process and worker paths batch the same images together.
"""

from __future__ import annotations

from service.jobs.walker import FileEntry


def make_chunks(entries: list[FileEntry], size: int) -> list[list[FileEntry]]:
    """Consecutive slices of at most ``size`` entries (none for an empty tree)."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    return [entries[start : start + size] for start in range(0, len(entries), size)]
