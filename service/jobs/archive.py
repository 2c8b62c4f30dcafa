"""Zip uploads for jobs: checked before acceptance, extracted without zip-slip or zip bombs.

An archive is refused as a whole when any member is unsafe (absolute path, drive letter, ``..``
component, symbolic link, encryption) rather than silently extracted in part. Sizes are checked
twice: the declared sizes at upload, the bytes really written during extraction.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

MAX_MEMBERS = 1_000_000
COPY_BLOCK = 1 << 20


class ArchiveError(Exception):
    """The upload cannot become a job: ``reason`` is a code, ``status`` the HTTP answer."""

    def __init__(self, reason: str, detail: str, status: int = 400) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.status = reason, detail, status


def _safe_parts(name: str) -> tuple[str, ...] | None:
    """Path components of a member name, or None when it could land outside the target."""
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or (len(normalised) > 1 and normalised[1] == ":"):
        return None
    parts = tuple(part for part in PurePosixPath(normalised).parts if part not in ("", "."))
    if any(part == ".." for part in parts):
        return None
    return parts


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def check_archive(path: Path, max_extract_bytes: int) -> int:
    """Validate an uploaded zip; returns the number of files. Raises :class:`ArchiveError`."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ArchiveError(
            "invalid_archive", f"not a readable zip archive ({type(exc).__name__})", 415
        ) from None
    if len(members) > MAX_MEMBERS:
        raise ArchiveError("too_large", f"more than {MAX_MEMBERS} members", 413)
    declared = 0
    files = 0
    for info in members:
        if _safe_parts(info.filename) is None:
            raise ArchiveError("unsafe_archive", "a member path leads outside the archive root")
        if _is_symlink(info):
            raise ArchiveError("unsafe_archive", "the archive contains a symbolic link")
        if info.flag_bits & 0x1:
            raise ArchiveError("unsafe_archive", "the archive contains encrypted members")
        if not info.is_dir():
            files += 1
            declared += info.file_size
    if declared > max_extract_bytes:
        raise ArchiveError("too_large", f"uncompressed size exceeds {max_extract_bytes // (1 << 20)} MB", 413)
    return files


def extract_archive(path: Path, dest: Path, max_extract_bytes: int) -> int:
    """Extract the checked archive into ``dest``; returns bytes written. Raises :class:`ArchiveError`."""
    check_archive(path, max_extract_bytes)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    written = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            parts = _safe_parts(info.filename)
            if not parts:
                continue
            target = root.joinpath(*parts)
            if not target.resolve().is_relative_to(root):
                raise ArchiveError("unsafe_archive", "a member path leads outside the archive root")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(info) as source, open(target, "wb") as sink:
                    while block := source.read(COPY_BLOCK):
                        written += len(block)
                        if written > max_extract_bytes:
                            raise ArchiveError("too_large", "archive expands beyond the allowed size", 413)
                        sink.write(block)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
                raise ArchiveError(
                    "invalid_archive", f"a member could not be extracted ({type(exc).__name__})"
                ) from None
    return written


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
