"""The node's spool: every received instance and every unsent result lives here, on disk, first.

A C-STORE is answered with success only after its instance is on disk (streamed into a temporary
file, fsynced, renamed into place, the folder fsynced), so a crash after the answer loses nothing. A
temporary file that cannot be finished (a full disk) is removed on the spot, never left to fill it.
Folders:

``incoming/<StudyInstanceUID>/<SOPInstanceUID>.dcm``  received, study still open
``scoring/<batch>/``                                   a study closed after its quiet time, being scored
``outbox/<destination>/<kind>-<SOP UID>.dcm``          results waiting for their destination's ack
``dead/<destination>/``                                results given up on after the last attempt
``tmp/``                                               files being received or written (cleared at start)

Study and SOP UIDs come from the sender, so they are checked against the UID grammar before they
become names. One process owns one spool (the listener); the lock orders the receiving threads and
the closing of a study, so an instance lands either in the batch that is scored or in a new study.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path

UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
FOLDERS = ("incoming", "scoring", "outbox", "dead", "tmp")


def is_uid(value: str) -> bool:
    """A DICOM UID (PS3.5 9.1): digits and dots, at most 64 characters; safe as a file name."""
    return 0 < len(value) <= 64 and bool(UID_PATTERN.match(value))


def fsync_path(path: Path) -> None:
    """fsync a file's data or a folder's entries (any descriptor of a file flushes all its writes)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The folders under ``root`` and the durable moves between them."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.lock = threading.Lock()
        for name in FOLDERS:
            (self.root / name).mkdir(parents=True, exist_ok=True)

    def folder(self, name: str) -> Path:
        return self.root / name

    def recover(self) -> int:
        """At start: clear half-written files; returns the batches a crash left in ``scoring/``."""
        for stale in self.folder("tmp").iterdir():
            stale.unlink(missing_ok=True)
        return sum(1 for path in self.folder("scoring").iterdir() if path.is_dir())

    def write_durably(self, target: Path, data: bytes) -> None:
        """Write ``data`` to ``target`` so that it is complete on disk when this returns."""
        tmp = self.folder("tmp") / f"{uuid.uuid4().hex}.part"
        try:
            with tmp.open("wb") as handle:
                handle.write(data)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.commit(tmp, target)

    def commit(self, tmp: Path, target: Path) -> None:
        """Make the written file ``tmp`` (in ``tmp/``) durable as ``target``; on any failure ``tmp`` is
        removed and the error raised."""
        try:
            fsync_path(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_path(target.parent)

    def put_instance(self, study_uid: str, sop_uid: str, received: Path) -> Path:
        """File one instance received into ``received`` (a file in ``tmp/``) under its open study; a
        re-sent instance replaces itself."""
        if not (is_uid(study_uid) and is_uid(sop_uid)):
            raise ValueError("Study or SOP Instance UID is not a valid UID")
        with self.lock:
            target = self.folder("incoming") / study_uid / f"{sop_uid}.dcm"
            self.commit(received, target)
        return target

    def quiet_studies(self, quiet_seconds: float, now: float | None = None) -> list[Path]:
        """Open studies that received nothing for ``quiet_seconds`` (a folder's mtime moves on each
        rename into it)."""
        now = time.time() if now is None else now
        return sorted(
            path
            for path in self.folder("incoming").iterdir()
            if path.is_dir() and now - path.stat().st_mtime >= quiet_seconds
        )

    def close_study(self, study: Path) -> Path:
        """Move an open study to ``scoring/`` as a new batch; later instances open it again."""
        with self.lock:
            batch = self.folder("scoring") / f"{study.name}~{time.time_ns()}"
            os.replace(study, batch)
            fsync_path(study.parent)
            fsync_path(batch.parent)
        return batch

    def batches(self) -> list[Path]:
        """Closed studies waiting to be scored (oldest first)."""
        return sorted(
            (path for path in self.folder("scoring").iterdir() if path.is_dir()),
            key=lambda path: path.name.rpartition("~")[2].zfill(24),
        )

    def queue_result(self, destination: str, source: Path) -> None:
        """Put a copy of one result file in a destination's outbox (idempotent: same name, same UID)."""
        self.write_durably(self.folder("outbox") / destination / source.name, source.read_bytes())

    def finish_batch(self, batch: Path) -> None:
        """The batch's results are all in the outboxes: drop its instances."""
        shutil.rmtree(batch)
        fsync_path(batch.parent)

    def pending(self, destination: str) -> list[Path]:
        folder = self.folder("outbox") / destination
        return sorted(folder.glob("*.dcm")) if folder.is_dir() else []

    def destinations_with_mail(self) -> list[str]:
        return sorted(path.name for path in self.folder("outbox").iterdir() if any(path.glob("*.dcm")))

    def acknowledged(self, item: Path) -> None:
        """The destination stored it: forget it and its attempt count."""
        item.unlink(missing_ok=True)
        attempts_file(item).unlink(missing_ok=True)
        fsync_path(item.parent)

    def dead_letter(self, destination: str, item: Path) -> Path:
        target = self.folder("dead") / destination / item.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(item, target)
        attempts = attempts_file(item)
        if attempts.exists():
            os.replace(attempts, attempts_file(target))
        fsync_path(item.parent)
        fsync_path(target.parent)
        return target

    def count(self, name: str) -> int:
        """Files under one folder (queue depth for the metrics)."""
        return sum(1 for _ in self.folder(name).rglob("*.dcm"))


def attempts_file(item: Path) -> Path:
    return item.with_name(item.name + ".attempts")


def read_attempts(item: Path) -> int:
    try:
        return int(attempts_file(item).read_text() or 0)
    except (OSError, ValueError):
        return 0


def write_attempts(item: Path, attempts: int) -> None:
    attempts_file(item).write_text(str(attempts))
