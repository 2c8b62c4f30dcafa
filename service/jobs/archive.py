"""Zip uploads for jobs: checked before acceptance, extracted without zip-slip or zip bombs.

An archive is refused as a whole when any member is unsafe (absolute path, drive letter, ``..``
component, symbolic link, encryption) rather than silently extracted in part. Sizes are checked
twice: the declared sizes at upload, the bytes really written during extraction.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from service.errors import ApiError

MAX_MEMBERS = 1_000_000
COPY_BLOCK = 1 << 20
PATH_CONFLICT, NAME_TOO_LONG = "path_conflict", "name_too_long"  # row reasons (service.jobs.rows)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
Skipped = tuple[str, str, str]  # member name, reason, detail


class ArchiveError(ApiError):
    """The upload cannot become a job: ``reason`` is a code, ``status`` the HTTP answer."""

    def __init__(self, reason: str, detail: str, status: int = 400) -> None:
        super().__init__(status, reason, detail)


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


def extract_archive(
    path: Path,
    dest: Path,
    max_extract_bytes: int,
    *,
    skipped: list[Skipped] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Extract the checked archive into ``dest``; returns bytes written. Raises :class:`ArchiveError`.

    A member the file system cannot hold (a name too long, a file where a folder must go, a
    duplicate name) is not extracted and is appended to ``skipped`` as ``(name, reason, detail)``:
    the job reports it as a row instead of failing. ``should_stop`` is asked between members and
    blocks; when it answers True (the job was cancelled) extraction stops with reason ``cancelled``.
    Files are written readable by the owner only.
    """
    check_archive(path, max_extract_bytes)
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    root = dest.resolve()
    written = 0
    seen: set[tuple[str, ...]] = set()
    with zipfile.ZipFile(path) as archive:
        for number, info in enumerate(archive.infolist()):
            if should_stop is not None and should_stop():
                raise ArchiveError("cancelled", "the job was cancelled during extraction", 409)
            parts = _safe_parts(info.filename)
            if not parts:
                continue
            name = "/".join(parts)
            if not info.is_dir() and parts in seen:
                _skip(skipped, f"{name}#{number}", PATH_CONFLICT, "another member has the same name")
                continue
            try:
                target = root.joinpath(*parts)
                if not target.resolve().is_relative_to(root):
                    raise ArchiveError("unsafe_archive", "a member path leads outside the archive root")
                if info.is_dir():
                    target.mkdir(mode=0o700, parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                written = _copy_member(archive, info, target, written, max_extract_bytes, should_stop)
                seen.add(parts)
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                _skip(skipped, name, PATH_CONFLICT, "a file and a folder of the archive have the same name")
            except OSError as exc:
                if exc.errno != errno.ENAMETOOLONG:
                    raise
                _skip(skipped, name, NAME_TOO_LONG, "the member name is too long for the file system")
    return written


def _copy_member(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    target: Path,
    written: int,
    limit: int,
    should_stop: Callable[[], bool] | None,
) -> int:
    try:
        with archive.open(info) as source, open(os.open(target, _CREATE, 0o600), "wb") as sink:
            blocks = 0
            while block := source.read(COPY_BLOCK):
                written += len(block)
                if written > limit:
                    raise ArchiveError("too_large", "archive expands beyond the allowed size", 413)
                sink.write(block)
                blocks += 1
                if should_stop is not None and blocks % 64 == 0 and should_stop():
                    raise ArchiveError("cancelled", "the job was cancelled during extraction", 409)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise ArchiveError(
            "invalid_archive", f"a member could not be extracted ({type(exc).__name__})"
        ) from None
    return written


def _skip(skipped: list[Skipped] | None, name: str, reason: str, detail: str) -> None:
    if skipped is not None:
        skipped.append((name, reason, detail))


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def remove_upload(job_dir: Path) -> None:
    """A zip job's upload and extracted files: needed only while it runs (rows keep their paths)."""
    remove_tree(job_dir / "input")
    (job_dir / "upload.zip").unlink(missing_ok=True)
