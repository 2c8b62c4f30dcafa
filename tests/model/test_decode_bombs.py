"""Size bombs inside the pixel data (issue 25, defect 1), and the codestream headers that catch them.

The DICOM header says 224x224 (within ``max_pixels`` and the decode budget); the codestream inside
declares 16000x16000, and decoders size their output from the codestream. Each bomb is read in a
child process under an address-space limit, as a memory-limited API or worker would: it must come
back as a coded rejection that names both sizes, with the child's peak memory far below what the
codestream asks for.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import encapsulate, get_frame
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from model.imaging import ImageRejected, read_image
from model.imaging.codestream import CodestreamError, declared_j2k, declared_jpeg
from tests.dicom_factory import make_dicom

REPO = Path(__file__).resolve().parents[2]
SIDE = 224
BOMB_SIDE = 16000
CHILD_ADDRESS_SPACE = 1536 << 20  # a 16000^2 decode needs 0.5-1 GB per plane: it cannot fit twice
CHILD_PEAK_LIMIT_MB = 500  # Python, numpy, pydicom, Pillow and the codecs: ~150 MB

CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
from model.imaging import ImageRejected, read_path
try:
    image = read_path(sys.argv[1], min_side=None if sys.argv[3] == "full" else 384)
    outcome = {"reason": None, "shape": list(image.pixels.shape)}
except ImageRejected as exc:
    outcome = {"reason": exc.reason, "detail": exc.detail}
status = open("/proc/self/status").read().split("VmHWM:")[1]  # ru_maxrss survives exec: not this
outcome["peak_mb"] = int(status.split()[0]) / 1024
print(json.dumps(outcome))
"""


def pixels() -> np.ndarray:
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    return ((x * 7 + y * 3) % 4096).astype(np.uint16)


def with_frame(data: bytes, frame: bytes) -> bytes:
    """``data`` with its single encapsulated frame replaced by ``frame``."""
    ds = dcmread(io.BytesIO(data))
    ds.PixelData = encapsulate([frame])
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def first_frame(data: bytes) -> bytes:
    ds = dcmread(io.BytesIO(data))
    return get_frame(ds.PixelData, 0, number_of_frames=1)


def patch_jpeg_size(frame: bytes, rows: int, columns: int, marker: int) -> bytes:
    at = frame.index(bytes([0xFF, marker]))
    return frame[: at + 5] + struct.pack(">HH", rows, columns) + frame[at + 9 :]


def patch_j2k_size(frame: bytes, rows: int, columns: int) -> bytes:
    """SIZ: Xsiz, Ysiz and the tile size (one tile), image offsets left at 0."""
    siz = frame.index(b"\xff\x51") + 2
    size = struct.pack(">IIIIII", columns, rows, 0, 0, columns, rows)
    return frame[: siz + 4] + size + frame[siz + 28 :]


def jpeg2000_bomb() -> bytes:
    data = make_dicom(pixels(), bits_stored=12, transfer_syntax=JPEG2000Lossless)
    return with_frame(data, patch_j2k_size(first_frame(data), BOMB_SIDE, BOMB_SIDE))


def jpeg_ls_bomb() -> bytes:
    data = make_dicom(pixels(), bits_stored=12, transfer_syntax=JPEGLSLossless)
    return with_frame(data, patch_jpeg_size(first_frame(data), BOMB_SIDE, BOMB_SIDE, 0xF7))


def jpeg_baseline_bomb() -> bytes:
    eight_bit = (pixels() >> 4).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(eight_bit).save(buffer, format="JPEG", quality=90)
    data = make_dicom(eight_bit, bits_stored=8, extra={"LossyImageCompression": "01"})
    ds = dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([patch_jpeg_size(buffer.getvalue(), BOMB_SIDE, BOMB_SIDE, 0xC0)])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def jpeg_lossless_bomb() -> bytes:
    frame = imagecodecs.jpeg8_encode(pixels(), lossless=True, bitspersample=12)
    data = make_dicom(pixels(), bits_stored=12)
    ds = dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([patch_jpeg_size(bytes(frame), BOMB_SIDE, BOMB_SIDE, 0xC3)])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


BOMBS = {
    "jpeg2000": jpeg2000_bomb,
    "jpeg-ls": jpeg_ls_bomb,
    "jpeg-baseline": jpeg_baseline_bomb,
    "jpeg-lossless": jpeg_lossless_bomb,
}


def read_in_child(path: Path, resolution: str) -> dict[str, object]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(CHILD_ADDRESS_SPACE), resolution],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, f"the reader died (exit {done.returncode}): {done.stderr[-2000:]}"
    assert done.stderr == "", done.stderr  # no traceback, no decoder chatter on the terminal
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("resolution", ["full", "reduced"])
@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_a_codestream_larger_than_its_header_is_refused_before_decoding(
    kind: str, resolution: str, tmp_path: Path
) -> None:
    path = tmp_path / f"{kind}.dcm"
    path.write_bytes(BOMBS[kind]())
    outcome = read_in_child(path, resolution)
    assert outcome["reason"] == "undecodable", outcome
    detail = str(outcome["detail"])
    assert f"declares {BOMB_SIDE}x{BOMB_SIDE}x1" in detail and f"header says {SIDE}x{SIDE}x1" in detail
    assert float(str(outcome["peak_mb"])) < CHILD_PEAK_LIMIT_MB, outcome


def test_a_codestream_smaller_than_its_header_is_refused_too() -> None:
    data = make_dicom(pixels(), bits_stored=12, transfer_syntax=JPEGLSLossless)
    small = with_frame(data, patch_jpeg_size(first_frame(data), 100, 100, 0xF7))
    with pytest.raises(ImageRejected) as info:
        read_image(small)
    assert info.value.reason == "undecodable"
    assert "declares 100x100x1" in info.value.detail


def test_a_frame_that_is_not_the_codestream_its_syntax_names_is_refused() -> None:
    data = make_dicom(pixels(), bits_stored=12, transfer_syntax=JPEG2000Lossless)
    with pytest.raises(ImageRejected) as info:
        read_image(with_frame(data, b"\x00" * 64))
    assert info.value.reason == "undecodable"
    assert "JPEG 2000 SOC/SIZ" in info.value.detail


def test_honest_codestreams_declare_the_header_size() -> None:
    for syntax, declared in ((JPEG2000Lossless, declared_j2k), (JPEGLSLossless, declared_jpeg)):
        frame = first_frame(make_dicom(pixels(), bits_stored=12, transfer_syntax=syntax))
        size = declared(frame)
        assert (size.rows, size.columns, size.components) == (SIDE, SIDE, 1)
    assert read_image(make_dicom(pixels(), bits_stored=12, transfer_syntax=RLELossless)).info.rows == SIDE


@pytest.mark.data
def test_real_codestreams_declare_their_header_sizes(shared_data: Path) -> None:
    """Every compressed WG04 file: the SOF/SOF55/SIZ size equals Rows/Columns; J2K has its levels."""
    checked = 0
    for path in sorted((shared_data / "dicom" / "wg04").rglob("*.dcm")):
        ds = dcmread(path)
        if not ds.file_meta.TransferSyntaxUID.is_encapsulated or "RLE" in path.parts[-2]:
            continue
        frame = get_frame(ds.PixelData, 0, number_of_frames=1)
        size = declared_j2k(frame) if path.parts[-2].startswith("J2K") else declared_jpeg(frame)
        assert (size.rows, size.columns, size.components) == (ds.Rows, ds.Columns, 1), path.name
        if path.parts[-2].startswith("J2K"):
            assert size.levels >= 3
        checked += 1
    assert checked == 12


def test_codestream_parsers_refuse_what_is_not_a_codestream() -> None:
    for parse in (declared_jpeg, declared_j2k):
        with pytest.raises(CodestreamError):
            parse(b"\x00" * 32)
    with pytest.raises(CodestreamError):
        declared_jpeg(b"\xff\xd8\xff\xc4\x00\x04\x00\x00\xff\xda\x00\x02")  # scan data before any SOF
