"""Read PNG and JPEG uploads (exports, screenshots, public datasets) into display-ready pixels.

A PNG/JPEG of an X-ray is already display-ready (bone white), so the only work is getting every
Pillow mode to one float gray plane without losing 16-bit depth, applying EXIF orientation (phone
photos and some exporters rotate by tag only) and refusing bombs before decoding.

Pillow's own bomb guard is the process-global ``Image.MAX_IMAGE_PIXELS``; we leave that global
alone (requests run in threads) and compare the header size with ``max_pixels`` ourselves before
any pixel is decoded. Pillow still refuses anything over twice its global limit.

With ``min_side`` a JPEG is decoded with DCT scaling (Pillow's ``draft``: 1/2, 1/4 or 1/8 a side)
and a PNG, which cannot be decoded smaller, is box-reduced on the way to gray
(:mod:`model.imaging.reduce`). An animated PNG is read at its first frame, with the same finding as a
multi-frame DICOM.
"""

from __future__ import annotations

import warnings
from io import BytesIO
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps

from model.blockwise import map_rows

from . import grayscale
from .errors import ImageRejected, Reason
from .privacy import without_addresses
from .reduce import box_factor, box_mean, map_then_reduce, power_of_two_steps
from .result import DecodedImage, Finding, ImageFormat, ImageInfo

PILLOW_FORMATS: dict[str, str] = {"png": "PNG", "jpeg": "JPEG"}
HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
MODE_BITS: dict[str, int] = {
    "1": 1,
    "I;16": 16,
    "I;16L": 16,
    "I;16B": 16,
    "I;16N": 16,
    "I": 32,
    "F": 32,
}
EXIF_ORIENTATION = 0x0112
# EXIF orientations 5-8 turn the picture a quarter: rows become columns.
QUARTER_TURNS = frozenset({5, 6, 7, 8})
MAX_DCT_STEPS = 3


def read_raster(
    data: bytes, fmt: ImageFormat, *, max_pixels: int, min_side: int | None = None
) -> DecodedImage:
    """PNG/JPEG bytes -> :class:`DecodedImage`, or :class:`ImageRejected` with the reason.

    ``min_side``: as for :func:`model.imaging.read_image` (``None``: full resolution).
    """
    findings: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(BytesIO(data), formats=[PILLOW_FORMATS[fmt]])
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected(
                    Reason.IMAGE_TOO_LARGE,
                    f"{width}x{height} pixels exceed the limit of {max_pixels}",
                )
            if width == 0 or height == 0:
                raise ImageRejected(Reason.EMPTY_IMAGE, f"image is {width}x{height}")
            if getattr(image, "n_frames", 1) > 1:
                findings.append(Finding.MULTI_FRAME_FIRST_USED)
            steps = power_of_two_steps(height, width, min_side, MAX_DCT_STEPS) if fmt == "jpeg" else 0
            if steps:
                image.draft(image.mode, (-(-width // (1 << steps)), -(-height // (1 << steps))))
            image.load()
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            image = ImageOps.exif_transpose(image)
    except ImageRejected:
        raise
    except Image.DecompressionBombError:
        raise ImageRejected(
            Reason.IMAGE_TOO_LARGE, "image dimensions exceed the decompression-bomb limit"
        ) from None
    except Exception as exc:
        raise ImageRejected(
            Reason.UNDECODABLE, f"{fmt.upper()} could not be decoded: {_reason(exc)}"
        ) from None
    if orientation in range(2, 9):
        findings.append(Finding.EXIF_ORIENTATION_APPLIED)
    if fmt == "jpeg":
        findings.append(Finding.LOSSY_COMPRESSED)
    mode = image.mode
    rows, columns = (width, height) if orientation in QUARTER_TURNS else (height, width)
    factor = box_factor(image.height, image.width, min_side)
    pixels, photometric = _gray(image, factor, findings)
    info = ImageInfo(
        format=fmt,
        rows=rows,
        columns=columns,
        photometric_interpretation=photometric,
        bits_stored=MODE_BITS.get(mode, 8),
    )
    return DecodedImage(pixels=pixels, info=info, warnings=findings)


def _gray(image: Image.Image, factor: int, findings: list[str]) -> tuple[NDArray[np.float32], str]:
    """Any Pillow mode -> float32 gray plane box-reduced by ``factor``, and the photometric
    interpretation it came from."""
    mode = image.mode
    if mode in HIGH_DEPTH_MODES or mode == "L":
        return _float(np.asarray(image), factor), "MONOCHROME2"
    if mode == "1":
        return _float(np.asarray(image.convert("L")), factor), "MONOCHROME2"
    if mode in ("LA", "La"):
        _note_alpha(np.asarray(image.getchannel("A")), findings)
        return _float(np.asarray(image.getchannel("L")), factor), "MONOCHROME2"
    photometric = "PALETTE COLOR" if mode in ("P", "PA") else "RGB"
    has_alpha = mode in ALPHA_MODES or "transparency" in image.info
    wanted = "RGBA" if has_alpha else "RGB"
    rgba = np.asarray(image if mode == wanted else image.convert(wanted))  # uint8, no float copy
    if has_alpha:
        _note_alpha(rgba[..., 3], findings)
    if grayscale.is_colour(rgba):
        findings.append(Finding.COLOR_CONVERTED_TO_GRAY)
    if factor > 1:
        return _float(map_then_reduce(rgba, grayscale.luma, factor), 1), photometric
    return map_rows(rgba, grayscale.luma, np.float32), photometric


def _note_alpha(alpha: NDArray[Any], findings: list[str]) -> None:
    if alpha.size and int(alpha.min()) < 255:
        findings.append(Finding.ALPHA_CHANNEL_IGNORED)


def _float(array: NDArray[Any], factor: int) -> NDArray[np.float32]:
    reduced = box_mean(array, factor) if factor > 1 else array
    return np.ascontiguousarray(reduced, dtype=np.float32)


def _reason(exc: Exception) -> str:
    message = without_addresses(" ".join(str(exc).split()))[:200]
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
