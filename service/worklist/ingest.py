"""A job's worklist index, kept up to date from its chunk files by whoever asks for a page.

Chunk files are the job's source of truth while it runs (each replaced whole when a chunk is scored
again), so the index remembers each chunk file's (mtime, size) and re-reads only those that changed.
A running job's folder is listed only when its modification time moved (every chunk file lands by
a rename into it) and that time is older than :data:`SETTLED_NS`, so a rename within the same clock
tick as the last listing is never missed. Once the job has ended and every chunk is in, the index is
marked complete and never scanned again; the finalizing worker does that, so that the page does not
pay for indexing a large job on its first view.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from service.jobs.results import ResultStore
from service.worklist.index import IndexedImage, WorklistIndex

INDEX_NAME = "worklist.sqlite3"
SETTLED_NS = 2_000_000_000


def job_index_path(job_dir: Path) -> Path:
    return job_dir / INDEX_NAME


def sync_job_index(job_dir: Path, finished: bool) -> Path:
    """Bring the index of the job in ``job_dir`` up to date with its chunk files; returns its path."""
    path = job_index_path(job_dir)
    store = ResultStore(job_dir)
    with WorklistIndex(path) as index:
        if index.meta("complete") == "1":
            return path
        folder_stamp = _folder_stamp(store.chunks)
        if not finished and folder_stamp is not None and index.meta("chunks_folder") == folder_stamp:
            return path
        present = _chunk_stamps(store.chunks)
        if not finished and WorklistIndex.chunks(index.db) == present:
            if folder_stamp is not None:  # nothing new, and the folder settled: no listing next time
                with index.writing() as db:
                    WorklistIndex.set_meta(db, "chunks_folder", folder_stamp)
            return path
        with index.writing() as db:
            known = WorklistIndex.chunks(db)  # again, under the write lock: another process may have synced
            touched: set[str] = set()
            for chunk in sorted(present):
                if known.get(chunk) != present[chunk]:
                    images = [IndexedImage.from_row(row, chunk) for row in store.read_chunk(chunk)]
                    touched |= WorklistIndex.replace_chunk(db, chunk, present[chunk], images)
            WorklistIndex.refresh_studies(db, touched)
            if finished:
                WorklistIndex.set_meta(db, "complete", "1")
            if folder_stamp is not None:
                WorklistIndex.set_meta(db, "chunks_folder", folder_stamp)
    return path


def _folder_stamp(folder: Path) -> str | None:
    """The chunk folder's modification time, once it is old enough to trust; else None (list it)."""
    try:
        mtime = folder.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    return str(mtime) if time.time_ns() - mtime > SETTLED_NS else None


def _chunk_stamps(folder: Path) -> dict[int, tuple[int, int]]:
    stamps: dict[int, tuple[int, int]] = {}
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return stamps
    for entry in entries:
        stem, dot, ext = entry.name.partition(".")
        if ext == "jsonl" and dot and stem.isdigit():
            info = entry.stat()
            stamps[int(stem)] = (info.st_mtime_ns, info.st_size)
    return stamps
