"""Real resource limits for the batch-job tests: a poison DICOM, a memory cgroup for a worker, a
small or read-only file system.

Nothing here is simulated: the poison is a valid RLE file whose decode needs more memory than a
worker's memory cgroup allows (the kernel's OOM killer ends the pool process, as under a container's
memory limit), the full disk is a size-limited tmpfs, the read-only folder a read-only mount (or,
for a non-root user, a folder without write permission; root ignores permissions, not a read-only
mount).
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless

from tests.dicom_factory import make_dicom
from tests.jobs.jobs_support import Worker


def _packbits_run(value: int, width: int) -> bytes:
    """One image row of a single byte value as DICOM RLE (PackBits) runs of at most 128 bytes."""
    out = bytearray()
    left = width
    while left:
        count = min(128, left)
        out += bytes(((257 - count) & 0xFF, value)) if count > 1 else bytes((0, value))
        left -= count
    return bytes(out)


def rle_bomb(rows: int, cols: int) -> bytes:
    """A valid 12-bit chest DX in RLE Lossless whose rows are each one grey level (a vertical ramp):
    a few MB on disk that decode to ``rows * cols`` pixels. Header and pixel data agree, so no size
    check refuses it below ``max_pixels``; only the memory it takes to decode stands in the way."""
    levels = np.linspace(200, 3800, rows).astype(np.uint16)
    high = b"".join(_packbits_run(int(level) >> 8, cols) for level in levels)
    low = b"".join(_packbits_run(int(level) & 0xFF, cols) for level in levels)
    if len(high) % 2:
        high, low = high + b"\x00", low + b"\x00"
    header = np.zeros(16, "<u4")
    header[:3] = (2, 64, 64 + len(high))
    frame = header.tobytes() + high + low
    dataset = dcmread(BytesIO(make_dicom(np.zeros((8, 8), np.uint16), bits_stored=12)))
    dataset.file_meta.TransferSyntaxUID = RLELossless
    dataset.Rows, dataset.Columns = rows, cols
    dataset.PixelData = encapsulate([frame])
    dataset["PixelData"].VR = "OB"
    dataset["PixelData"].is_undefined_length = True
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def pool_pids(worker: Worker) -> list[int]:
    """The worker's pool processes (children of its main process)."""
    main = worker.process.pid
    children: list[int] = []
    for task in Path(f"/proc/{main}/task").iterdir():
        children += [int(pid) for pid in (task / "children").read_text().split()]
    return children


@dataclass
class MemoryCgroup:
    """A memory cgroup (v1 ``memory.limit_in_bytes`` or v2 ``memory.max``) below this process's own."""

    path: Path
    limit_file: str
    usage_file: str

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def usage(self) -> int:
        return int((self.path / self.usage_file).read_text())

    def limit(self, size: int) -> None:
        (self.path / self.limit_file).write_text(str(size))


def _own_cgroup() -> tuple[Path, str, str] | None:
    """Where this process's memory cgroup is, and its limit and usage files (v1, else v2)."""
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    for line in lines:
        _, controllers, relative = line.split(":", 2)
        if "memory" in controllers.split(","):
            return (
                Path("/sys/fs/cgroup/memory") / relative.lstrip("/"),
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
    unified = Path("/sys/fs/cgroup")
    if (unified / "cgroup.controllers").is_file():
        relative = next(line.split(":", 2)[2] for line in lines if line.startswith("0::"))
        own = unified / relative.lstrip("/")
        if "memory" in (own / "cgroup.subtree_control").read_text().split():
            return own, "memory.max", "memory.current"
    return None


@contextmanager
def memory_cgroup(name: str) -> Iterator[MemoryCgroup]:
    """A fresh child memory cgroup; the test moves processes into it and sets the limit. Processes
    still in it at the end must have exited (the cgroup is removed)."""
    require_root("a memory cgroup")
    own = _own_cgroup()
    if own is None:
        pytest.skip("no memory cgroup controller this process may use")
    base, limit_file, usage_file = own
    path = base / f"{name}-{os.getpid()}"
    try:
        path.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup ({exc.strerror})")
    try:
        yield MemoryCgroup(path, limit_file, usage_file)
    finally:
        for _ in range(100):  # the worker's processes are gone a moment after it was stopped
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=60)


def _unmount(target: Path) -> None:
    subprocess.run(["umount", "--lazy", str(target)], capture_output=True, timeout=60, check=False)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root (mount)")


@contextmanager
def small_filesystem(target: Path, size_mb: float) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` mounted on ``target``: writes past it fail with ENOSPC."""
    require_root("a size-limited file system")
    target.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={int(size_mb * 1024)}k,mode=0755", "tmpfs", str(target))
    try:
        yield target
    finally:
        _unmount(target)


def remount(target: Path, options: str) -> None:
    """Change a tmpfs mounted by :func:`small_filesystem`: ``ro``, ``rw``, ``size=64m``."""
    _mount("-o", f"remount,{options}", str(target))


def fill(folder: Path) -> Path:
    """Write into ``folder`` until its file system is full; the filler file."""
    filler = folder / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * (1 << 20))
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


@contextmanager
def read_only_folder(target: Path) -> Iterator[Path]:
    """An empty folder no process of ours can write into: a read-only tmpfs for root, else mode 0555."""
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        target.chmod(0o555)
        try:
            yield target
        finally:
            target.chmod(0o755)
        return
    _mount("-t", "tmpfs", "-o", "ro,size=1024k", "tmpfs", str(target))
    try:
        yield target
    finally:
        _unmount(target)
