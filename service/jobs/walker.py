"""Find every file of a PACS export tree, as exports really look.

Nested patient/study/series folders, files with or without ``.dcm``, PNG/JPEG, junk, and an optional
DICOMDIR. Nothing is decided from names except the DICOMDIR itself: the reader tells formats apart
by content. When a DICOMDIR is present its referenced files come first, in its patient/study/series
order (so a chunk holds neighbouring images), and a referenced file that is missing becomes a failed
row; files it does not reference are still scored. Symbolic links are followed only when they stay
inside the job root.
"""

from __future__ import annotations

import logging
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread

from service.jobs.rows import Reason

log = logging.getLogger(__name__)

DICOMDIR_NAME = "DICOMDIR"


@dataclass(frozen=True)
class FileEntry:
    """One file of a job: its path relative to the job root (POSIX form) and how it looked when walked.

    ``preset`` is a reason the walker already knows (the DICOMDIR itself, a link out of the root, a
    file the DICOMDIR names but the tree lacks); such entries are never read.
    """

    path: str
    size: int = 0
    mtime_ns: int = 0
    preset: str | None = None
    detail: str = ""

    def to_wire(self) -> list[Any]:
        """Compact JSON form for task messages and the manifest."""
        return [self.path, self.size, self.mtime_ns, self.preset, self.detail]

    @classmethod
    def from_wire(cls, item: list[Any]) -> FileEntry:
        path, size, mtime_ns, preset, detail = item
        return cls(str(path), int(size), int(mtime_ns), preset, str(detail))


def is_inside(root: Path, candidate: Path) -> bool:
    """Whether ``candidate`` (already resolved) lies in the resolved ``root``."""
    return candidate == root or candidate.is_relative_to(root)


def resolve_inside(root: Path, relative: str) -> Path:
    """The real path of ``relative`` under ``root``; ``PermissionError`` when links lead outside."""
    target = (root / relative).resolve()
    if not is_inside(root.resolve(), target):
        raise PermissionError("path leads outside the job root")
    return target


def walk(root: Path) -> list[FileEntry]:
    """Every file under ``root`` (DICOMDIR references first, then the rest sorted by path)."""
    root = root.resolve()
    found: dict[str, FileEntry] = {}
    dicomdirs: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames.sort()
        for name in list(dirnames):
            link = here / name
            if link.is_symlink():
                dirnames.remove(name)  # never descend through links; report those leaving the root
                if not is_inside(root, link.resolve()):
                    rel = link.relative_to(root).as_posix()
                    found[rel] = FileEntry(
                        rel, preset=Reason.OUTSIDE_ROOT, detail="link leads out of the job root"
                    )
        for name in sorted(filenames):
            entry = _entry(root, here / name)
            found[entry.path] = entry
            if entry.preset == Reason.DICOMDIR:
                dicomdirs.append(entry.path)
    referenced: list[str] = []
    for rel in dicomdirs:
        referenced.extend(_dicomdir_references(root, rel, found))
    ordered: list[FileEntry] = []
    seen: set[str] = set()
    for rel in referenced:
        if rel not in seen:
            seen.add(rel)
            ordered.append(found[rel])
    ordered.extend(found[rel] for rel in sorted(found) if rel not in seen)
    return ordered


def _entry(root: Path, path: Path) -> FileEntry:
    rel = path.relative_to(root).as_posix()
    try:
        if path.is_symlink() and not is_inside(root, path.resolve()):
            return FileEntry(rel, preset=Reason.OUTSIDE_ROOT, detail="link leads out of the job root")
        info = path.stat()
    except OSError as exc:
        return FileEntry(rel, preset=Reason.UNREADABLE, detail=exc.strerror or type(exc).__name__)
    if not stat.S_ISREG(info.st_mode):
        return FileEntry(rel, info.st_size, info.st_mtime_ns, Reason.UNSUPPORTED_FORMAT, "not a regular file")
    preset = Reason.DICOMDIR if path.name.upper() == DICOMDIR_NAME and _is_dicomdir(path) else None
    return FileEntry(rel, info.st_size, info.st_mtime_ns, preset, "DICOM media directory" if preset else "")


def _is_dicomdir(path: Path) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(path, stop_before_pixels=True, specific_tags=["DirectoryRecordSequence"])
        return "DirectoryRecordSequence" in ds
    except Exception:  # a file merely named DICOMDIR is read like any other file
        return False


def _dicomdir_references(root: Path, rel: str, found: dict[str, FileEntry]) -> list[str]:
    """Paths (relative to root) the DICOMDIR at ``rel`` references, adding rows for missing ones."""
    base = (root / rel).parent
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            records = dcmread(root / rel).DirectoryRecordSequence
    except Exception:
        log.warning("a DICOMDIR could not be parsed; its folder is walked without it")
        return []
    by_lower = {key.lower(): key for key in found}
    paths: list[str] = []
    for record in records:
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        parts = [file_id] if isinstance(file_id, str) else [str(part) for part in file_id]
        target = (base / Path(*parts)).resolve()
        if not is_inside(root, target):
            key = f"{rel}#{'/'.join(parts)}"
            found[key] = FileEntry(
                key, preset=Reason.OUTSIDE_ROOT, detail="DICOMDIR reference leads out of the root"
            )
            paths.append(key)
            continue
        key = target.relative_to(root).as_posix()
        key = key if key in found else by_lower.get(key.lower(), key)  # media written in upper case
        if key not in found:
            found[key] = FileEntry(
                key, preset=Reason.MISSING_FILE, detail="referenced by the DICOMDIR but absent"
            )
        paths.append(key)
    return paths
