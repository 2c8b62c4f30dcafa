"""The one entry point: bytes in, display-ready pixels or a coded rejection out."""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import replace
from io import BytesIO

from PIL import Image

from .detect import detect_format
from .dicom import dicom_pixels, read_dicom
from .errors import ImageRejected, Reason
from .gates import HEADER_RULES
from .raster import read_raster
from .result import DecodedImage, Finding

DEFAULT_MAX_PIXELS = 100_000_000
PEAK_BYTES_PER_PIXEL = 12  # measured by bench/decode_memory.py: decoded float32 + one working copy + input
SMALL_SIDE = 256
MAX_ASPECT_RATIO = 1.5


def read_image(
    data: bytes | bytearray | memoryview,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    header_rules: Collection[str] = HEADER_RULES,
    min_side: int | None = None,
) -> DecodedImage:
    """Decode a DICOM, PNG or JPEG upload (detected by content) into a :class:`DecodedImage`.

    ``min_side``: the caller needs no more than this many pixels on the image's shorter side, so
    the image is decoded at the smallest resolution that keeps them (JPEG 2000 resolution levels,
    JPEG DCT scaling, box means of decoded pixels: :mod:`model.imaging.reduce`); ``None`` decodes
    at full resolution. Every scoring channel passes
    :func:`model.imaging.reduce.min_side_for` of its model through :func:`model.steps.prepare`.
    ``header_rules`` are the domain gate's DICOM header rules in force (:mod:`model.imaging.gates`;
    an empty set for tooling and decoder tests). Any failure is an :class:`ImageRejected` (an
    :class:`OutOfDomain` when a header rule fails); nothing else escapes, and no message quotes
    patient data.
    """
    data = bytes(data) if not isinstance(data, bytes) else data
    if not data:
        raise ImageRejected(Reason.EMPTY_IMAGE, "empty input")
    fmt = detect_format(data)
    if fmt is None:
        raise ImageRejected(
            Reason.UNSUPPORTED_FORMAT, "content is not DICOM, PNG or JPEG (checked by magic bytes)"
        )
    try:
        if fmt == "dicom":
            decoded = read_dicom(data, max_pixels=max_pixels, header_rules=header_rules, min_side=min_side)
        else:
            decoded = read_raster(data, fmt, max_pixels=max_pixels, min_side=min_side)
    except ImageRejected:
        raise
    except Exception as exc:  # a malformed header can break pydicom anywhere; keep the contract
        raise ImageRejected(Reason.UNDECODABLE, f"{fmt} could not be read ({type(exc).__name__})") from None
    if decoded.pixels.ndim != 2 or decoded.pixels.size == 0:
        raise ImageRejected(Reason.EMPTY_IMAGE, f"decoded image has shape {decoded.pixels.shape}")
    findings = [str(code) for code in decoded.warnings] + shape_findings(
        (decoded.info.rows, decoded.info.columns)
    )
    return replace(decoded, warnings=findings)


def declared_pixels(data: bytes) -> int:
    """Pixels (times samples) the header promises, read without decoding; 0 when it cannot say.

    What a decode of ``data`` will cost is about :data:`PEAK_BYTES_PER_PIXEL` times this, which lets
    a server budget its decoding memory before it starts.
    """
    fmt = detect_format(data)
    try:
        if fmt == "dicom":
            return dicom_pixels(data)
        if fmt is not None:
            with Image.open(BytesIO(data)) as image:
                width, height = image.size
                return width * height * max(1, len(image.getbands()))
    except Exception:  # the decoder will say what is wrong
        return 0
    return 0


def read_path(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    header_rules: Collection[str] = HEADER_RULES,
    min_side: int | None = None,
) -> DecodedImage:
    """:func:`read_image` on a file's bytes (the name plays no part in format detection)."""
    with open(path, "rb") as handle:
        data = handle.read()
    return read_image(data, max_pixels=max_pixels, header_rules=header_rules, min_side=min_side)


def shape_findings(shape: tuple[int, ...]) -> list[str]:
    """Soft findings about geometry: tiny images and non-chest-like aspect ratios."""
    short, long = sorted(shape[:2])
    findings: list[str] = []
    if short < SMALL_SIDE:
        findings.append(Finding.SMALL_IMAGE.value)
    if long / short > MAX_ASPECT_RATIO:
        findings.append(Finding.UNUSUAL_ASPECT_RATIO.value)
    return findings
