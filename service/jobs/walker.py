"""Find every file of a PACS export tree, as exports really look.

Nested patient/study/series folders, files with or without ``.dcm``, PNG/JPEG, junk, and an optional
DICOMDIR. Nothing is decided from names except the DICOMDIR itself: the reader tells formats apart
by content. When a DICOMDIR is present its referenced files come first, in its patient/study/series
order (so a chunk holds neighbouring images), and a referenced file that is missing becomes a failed
row; files it does not reference are still scored. Symbolic links are followed only when they stay
inside the job root.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.imaging.headers import dicomdir_file_ids, is_dicomdir
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
                rel = link.relative_to(root).as_posix()
                problem = _link_problem(root, link)
                if problem is not None:
                    found[rel] = FileEntry(rel, preset=problem[0], detail=problem[1])
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
    problem = _link_problem(root, path) if path.is_symlink() else None
    if problem is not None:
        return FileEntry(rel, preset=problem[0], detail=problem[1])
    try:
        info = path.stat()
    except OSError as exc:
        reason, detail = _os_problem(exc)
        return FileEntry(rel, preset=reason, detail=detail)
    if not stat.S_ISREG(info.st_mode):
        return FileEntry(rel, info.st_size, info.st_mtime_ns, Reason.UNSUPPORTED_FORMAT, "not a regular file")
    preset = Reason.DICOMDIR if path.name.upper() == DICOMDIR_NAME and is_dicomdir(path) else None
    return FileEntry(rel, info.st_size, info.st_mtime_ns, preset, "DICOM media directory" if preset else "")


def _link_problem(root: Path, link: Path) -> tuple[Reason, str] | None:
    """Why a symbolic link is not followed (a loop, out of the root), or None when it may be."""
    try:
        target = link.resolve()
    except RuntimeError:  # Python's message for a loop
        return Reason.SYMLINK_LOOP, "symbolic link loop"
    except OSError as exc:
        return _os_problem(exc)
    if not is_inside(root, target):
        return Reason.OUTSIDE_ROOT, "link leads out of the job root"
    return None


def _os_problem(exc: OSError) -> tuple[Reason, str]:
    """A row reason for a file-system error; the detail never quotes the path."""
    if exc.errno == errno.ELOOP:
        return Reason.SYMLINK_LOOP, "symbolic link loop"
    if exc.errno == errno.ENAMETOOLONG:
        return Reason.NAME_TOO_LONG, "the path is too long for the file system"
    return Reason.UNREADABLE, exc.strerror or type(exc).__name__


def _dicomdir_references(root: Path, rel: str, found: dict[str, FileEntry]) -> list[str]:
    """Paths (relative to root) the DICOMDIR at ``rel`` references, adding rows for missing ones."""
    base = (root / rel).parent
    try:
        file_ids = dicomdir_file_ids(root / rel)
    except Exception:
        log.warning("a DICOMDIR could not be parsed; its folder is walked without it")
        return []
    by_lower = {key.lower(): key for key in found}
    paths: list[str] = []
    for parts in file_ids:
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
