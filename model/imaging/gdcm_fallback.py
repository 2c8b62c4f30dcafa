"""GDCM as the decoder of last resort, in a child process (:mod:`model.imaging.gdcm_child`).

Only compressed pixel data that libjpeg-turbo, CharLS, OpenJPEG and every pydicom plugin refused
comes here. GDCM tolerates streams the others reject, which is exactly why it runs apart: a file
no other decoder accepts is the likeliest to be hostile or broken, and in a child with a capped
address space (:data:`BASE_ADDRESS_SPACE` plus a few times the frame) and a time limit
(:data:`TIMEOUT_S`) it can cost that child, never the API, the worker or the DICOM node. The child
also keeps GDCM's messages on stderr off the user's terminal. Starting it costs about a quarter of a
second, paid only by files that would otherwise be refused.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import subprocess
import sys
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy
from numpy.typing import NDArray
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import UID, AllTransferSyntaxes

CHILD = Path(__file__).with_name("gdcm_child.py")
TIMEOUT_S = 60.0
BASE_ADDRESS_SPACE = 768 << 20  # Python, numpy and GDCM themselves, measured at ~300 MB
FRAME_COPIES = 6  # the decoded buffer, its Python string, the bytes, the array: with room to spare
STDERR_LINES = 3


def keep_out_of_process() -> None:
    """Remove pydicom's own GDCM plugins, so that GDCM never runs in this process.

    pydicom tries GDCM first whenever python-gdcm is installed, and GDCM aborts the whole process on
    some inputs (a C++ exception: an RLE encode of an odd-width 8-bit image does). Called when
    :mod:`model.imaging` is imported; not thread-safe (pydicom's ``remove_plugin``), hence at import.
    """
    for uid in AllTransferSyntaxes:
        for lookup in (get_decoder, get_encoder):
            try:
                plugins = lookup(UID(uid))
            except (NotImplementedError, ValueError):
                continue
            with contextlib.suppress(ValueError):  # no GDCM plugin for this syntax
                plugins.remove_plugin("gdcm")


@functools.cache
def available() -> bool:
    """Whether python-gdcm is installed (a dependency; absent only in a trimmed environment)."""
    return importlib.util.find_spec("gdcm") is not None


def decode(data: bytes, rows: int, columns: int, samples: int, bytes_per_sample: int) -> NDArray[Any]:
    """The first frame of the DICOM file ``data`` as GDCM decodes it; raises ``RuntimeError``."""
    limit = BASE_ADDRESS_SPACE + FRAME_COPIES * rows * columns * samples * bytes_per_sample
    with tempfile.TemporaryDirectory(prefix="squid-gdcm-") as folder:
        path = Path(folder) / "frame.dcm"
        path.write_bytes(data)
        try:
            done = subprocess.run(
                [sys.executable, "-I", str(CHILD), str(path), str(limit)],
                capture_output=True,
                timeout=TIMEOUT_S,
                env=_child_env(),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"GDCM took longer than {TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        said = " ".join(done.stderr.decode("utf-8", "replace").split()[-40:]) or "no message"
        raise RuntimeError(f"GDCM failed (exit status {done.returncode}): {said}")
    return _array(done.stdout)


def _array(npy_bytes: bytes) -> NDArray[Any]:
    """The array of an ``.npy`` byte string, as a view of those bytes (no second copy)."""
    stream = BytesIO(npy_bytes)
    version = npy.read_magic(stream)
    read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    shape, fortran, dtype = read_header(stream)
    if fortran:
        raise RuntimeError("GDCM child wrote a Fortran-ordered array")
    count = int(np.prod(shape))
    return np.frombuffer(npy_bytes, dtype=dtype, count=count, offset=stream.tell()).reshape(shape)


def _child_env() -> dict[str, str]:
    """The parent's environment with one BLAS thread: OpenBLAS reserves memory per thread."""
    return {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
