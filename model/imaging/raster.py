"""Read PNG and JPEG uploads (exports, screenshots, public datasets) into display-ready pixels.

A PNG/JPEG of an X-ray is already display-ready (bone white), so the only work is getting every
Pillow mode to one float gray plane without losing 16-bit depth, applying EXIF orientation (phone
photos and some exporters rotate by tag only) and refusing bombs before decoding.

Pillow's own bomb guard is the process-global ``Image.MAX_IMAGE_PIXELS``; we leave that global
alone (requests run in threads) and compare the header size with ``max_pixels`` ourselves before
any pixel is decoded. Pillow still refuses anything over twice its global limit.
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


def read_raster(data: bytes, fmt: ImageFormat, *, max_pixels: int) -> DecodedImage:
    """PNG/JPEG bytes -> :class:`DecodedImage`, or :class:`ImageRejected` with the reason."""
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
    pixels, photometric = _gray(image, findings)
    info = ImageInfo(
        format=fmt,
        rows=int(pixels.shape[0]),
        columns=int(pixels.shape[1]),
        photometric_interpretation=photometric,
        bits_stored=MODE_BITS.get(mode, 8),
    )
    return DecodedImage(pixels=pixels, info=info, warnings=findings)


def _gray(image: Image.Image, findings: list[str]) -> tuple[NDArray[np.float32], str]:
    """Any Pillow mode -> float32 gray plane, and the photometric interpretation it came from."""
    mode = image.mode
    if mode in HIGH_DEPTH_MODES or mode == "L":
        return _float(np.asarray(image)), "MONOCHROME2"
    if mode == "1":
        return _float(np.asarray(image.convert("L"))), "MONOCHROME2"
    if mode in ("LA", "La"):
        _note_alpha(np.asarray(image.getchannel("A")), findings)
        return _float(np.asarray(image.getchannel("L"))), "MONOCHROME2"
    photometric = "PALETTE COLOR" if mode in ("P", "PA") else "RGB"
    has_alpha = mode in ALPHA_MODES or "transparency" in image.info
    wanted = "RGBA" if has_alpha else "RGB"
    rgba = np.asarray(image if mode == wanted else image.convert(wanted))  # uint8, no float copy
    if has_alpha:
        _note_alpha(rgba[..., 3], findings)
    if grayscale.is_colour(rgba):
        findings.append(Finding.COLOR_CONVERTED_TO_GRAY)
    return map_rows(rgba, grayscale.luma, np.float32), photometric


def _note_alpha(alpha: NDArray[Any], findings: list[str]) -> None:
    if alpha.size and int(alpha.min()) < 255:
        findings.append(Finding.ALPHA_CHANNEL_IGNORED)


def _float(array: NDArray[Any]) -> NDArray[np.float32]:
    return np.ascontiguousarray(array, dtype=np.float32)


def _reason(exc: Exception) -> str:
    message = without_addresses(" ".join(str(exc).split()))[:200]
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
