"""The DICOM grayscale pipeline after decoding: Modality LUT -> VOI LUT -> presentation polarity.

Each step follows PS3.3 C.11 and PS3.4 N.2; outputs are float64 so no step clips or wraps. The
VOI step maps to [0, 1] so that polarity inversion is simply ``1 - x``.

Why not ``pydicom.pixels.apply_voi_lut`` directly: it returns windowed values in the *modality*
range (not the window's output range), and its VOI LUT Sequence path indexes with the LUT's own
dtype (a LUT with 8-bit entries and more than 256 entries wraps). The formulas are short enough to
own, and the tests cross-check them against pydicom.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut
from pydicom.valuerep import VR

from model.blockwise import row_blocks

from .result import Finding

FloatArray = NDArray[np.float64]

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# Mean |R-G| + |G-B| (8-bit units) above which an RGB image is really coloured, not gray in RGB.
COLOR_SPREAD = 2.0


def modality_values(stored: NDArray[Any], ds: Dataset) -> FloatArray:
    """Stored values -> modality values (Rescale Slope/Intercept or Modality LUT Sequence)."""
    return np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)


def voi_values(values: FloatArray, ds: Dataset, findings: list[str]) -> FloatArray:
    """Modality values -> VOI output in [0, 1], larger = brighter for MONOCHROME2.

    Order of preference: first VOI LUT Sequence item, first Window Center/Width pair with its
    VOI LUT Function, then the image's own min..max (noted as a finding). A window that leaves the
    whole image on one level (stale window after a conversion) also falls back to min..max.
    """
    sequence = ds.get("VOILUTSequence")
    if sequence:
        return _lut_sequence(values, sequence[0], ds)
    window = _first_window(ds)
    if window is not None:
        center, width = window
        function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
        if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            findings.append(Finding.UNKNOWN_VOI_LUT_FUNCTION)
            function = "LINEAR"
        if width <= 0 or (function == "LINEAR" and width < 1):
            findings.append(Finding.INVALID_VOI_WINDOW_FULL_RANGE)
            return full_range(values)
        out = apply_window(values, center, width, function)
        if np.ptp(out) == 0 and np.ptp(values) > 0:
            findings.append(Finding.VOI_WINDOW_OUTSIDE_DATA_FULL_RANGE)
            return full_range(values)
        return out
    findings.append(Finding.NO_VOI_WINDOW_FULL_RANGE)
    return full_range(values)


def modality_range(stored: NDArray[Any], ds: Dataset) -> tuple[float, float]:
    """Min and max modality value of the whole image.

    An affine modality maps the stored extremes (no float pass over the image); a Modality LUT
    Sequence is evaluated a block of rows at a time.
    """
    if modality_is_affine(ds) and stored.ndim == 2:
        ends = modality_values(np.array([stored.min(), stored.max()]), ds)
        return float(ends.min()), float(ends.max())
    low, high = np.inf, -np.inf
    for rows in row_blocks(stored):
        values = modality_values(stored[rows], ds)
        low, high = min(low, float(values.min())), max(high, float(values.max()))
    return low, high


@dataclass(frozen=True)
class Voi:
    """The VOI step as an element-wise function, and whether it is affine over the image's range.

    Affine means it commutes with averaging, so it may run after a box reduction with the same
    result as before it (:mod:`model.imaging.reduce`).
    """

    apply: Callable[[FloatArray], FloatArray]
    affine: bool


def voi_function(low: float, high: float, ds: Dataset, findings: list[str]) -> Voi:
    """:func:`voi_values` as an element-wise function, decided once from the image's modality range.

    The window functions are monotonic, so "the window leaves the whole image on one level" is
    read off the window's output at ``low`` and ``high``; the formula then runs block by block. A
    LINEAR or LINEAR_EXACT window is affine when neither end of the range is clipped; a VOI LUT
    Sequence or a SIGMOID window never is.
    """
    sequence = ds.get("VOILUTSequence")
    if sequence:
        item = sequence[0]
        return Voi(lambda values: _lut_sequence(values, item, ds), affine=False)
    window = _first_window(ds)
    if window is not None:
        center, width = window
        function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
        if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            findings.append(Finding.UNKNOWN_VOI_LUT_FUNCTION)
            function = "LINEAR"
        if width <= 0 or (function == "LINEAR" and width < 1):
            findings.append(Finding.INVALID_VOI_WINDOW_FULL_RANGE)
            return _full_range_of(low, high)
        edges = apply_window(np.array([low, high]), center, width, function)
        if edges[0] == edges[1] and high > low:
            findings.append(Finding.VOI_WINDOW_OUTSIDE_DATA_FULL_RANGE)
            return _full_range_of(low, high)
        unclipped = function != "SIGMOID" and width != 1 and edges[0] > 0.0 and edges[1] < 1.0
        return Voi(lambda values: apply_window(values, center, width, function), affine=unclipped)
    findings.append(Finding.NO_VOI_WINDOW_FULL_RANGE)
    return _full_range_of(low, high)


def modality_is_affine(ds: Dataset) -> bool:
    """Rescale Slope/Intercept is affine; a Modality LUT Sequence is a table lookup."""
    return not ds.get("ModalityLUTSequence")


def affine_for_any_stored_value(ds: Dataset) -> bool:
    """Whether Modality LUT and VOI are affine over every value Bits Stored allows.

    Decided from the header alone, before decoding: then the LUTs may run after a reduction the
    codec makes (a JPEG 2000 resolution level), where no full-size values exist to run them on.
    """
    if not modality_is_affine(ds):
        return False
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    stored = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    ends = modality_values(np.array(stored), ds)
    return voi_function(float(ends.min()), float(ends.max()), ds, []).affine


def _full_range_of(low: float, high: float) -> Voi:
    if high <= low:
        return Voi(np.zeros_like, affine=True)
    return Voi(lambda values: (values - low) / (high - low), affine=True)


def apply_window(values: FloatArray, center: float, width: float, function: str) -> FloatArray:
    """PS3.3 C.11.2.1.2 window functions with output range [0, 1]."""
    if function == "SIGMOID":
        return 0.5 * (1.0 + np.tanh(2.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width == 1:
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def full_range(values: FloatArray) -> FloatArray:
    """Linear map of the image's own min..max to [0, 1]; constant images map to 0."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def needs_inversion(photometric: str, presentation_lut_shape: str | None) -> bool:
    """Whether VOI output must be flipped so that larger = brighter.

    Presentation LUT Shape, when present, decides (PS3.3 C.11.6): in the DX and CR "for
    presentation" IODs ``INVERSE`` *is* how MONOCHROME1 is expressed (DX requires INVERSE with
    MONOCHROME1 and IDENTITY with MONOCHROME2), so MONOCHROME1 + INVERSE is one inversion, not two
    that cancel. This matches highdicom and the stored content of its MONOCHROME1 + INVERSE test
    image (air bright in stored values). Without a shape, MONOCHROME1 inverts.
    """
    if presentation_lut_shape in ("INVERSE", "IDENTITY"):
        return presentation_lut_shape == "INVERSE"
    return photometric == "MONOCHROME1"


def shape_conflicts_photometric(photometric: str, presentation_lut_shape: str | None) -> bool:
    """MONOCHROME1 + IDENTITY or MONOCHROME2 + INVERSE: legal in a presentation state, odd here."""
    return (photometric, presentation_lut_shape) in (
        ("MONOCHROME1", "IDENTITY"),
        ("MONOCHROME2", "INVERSE"),
    )


def luma(rgb: NDArray[Any]) -> FloatArray:
    """ITU-R BT.601 luma of an (..., 3+) array; extra channels (alpha) are ignored."""
    channels = np.asarray(rgb[..., :3], dtype=np.float64)
    return np.tensordot(channels, np.asarray(LUMA_WEIGHTS), axes=([-1], [0]))


def is_colour(rgb: NDArray[Any], full_scale: float = 255.0) -> bool:
    """Whether an (H, W, 3+) image is really coloured, not gray stored as RGB (R = G = B up to
    compression noise): mean ``|R-G| + |G-B|`` above :data:`COLOR_SPREAD` 8-bit units."""
    spread = 0.0
    for rows in row_blocks(rgb):
        part = rgb[rows, :, :3].astype(np.float64)
        spread += float((np.abs(part[..., 0] - part[..., 1]) + np.abs(part[..., 1] - part[..., 2])).sum())
    mean = spread / max(1, rgb.shape[0] * rgb.shape[1])
    return mean * 255.0 / full_scale > COLOR_SPREAD


def _first_window(ds: Dataset) -> tuple[float, float] | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None or center == "" or width == "":
        return None
    try:
        first_center = float(center[0] if _is_multi(center) else center)
        first_width = float(width[0] if _is_multi(width) else width)
    except (TypeError, ValueError, IndexError):
        return None
    if not (np.isfinite(first_center) and np.isfinite(first_width)):
        return None
    return first_center, first_width


def _is_multi(value: Any) -> bool:
    return isinstance(value, MultiValue | list | tuple)


def _lut_sequence(values: FloatArray, item: Dataset, ds: Dataset) -> FloatArray:
    entries, first_mapped, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536
    if int(ds.get("PixelRepresentation", 0)) == 1 and first_mapped > 32767:
        first_mapped -= 65536
    table = _lut_table(item, ds, entries)
    index = np.clip(np.rint(values) - first_mapped, 0, len(table) - 1).astype(np.int64)
    return table[index] / float(2**bits - 1)


def _lut_table(item: Dataset, ds: Dataset, entries: int) -> FloatArray:
    element = item["LUTData"]
    if element.VR == VR.OW or isinstance(element.value, bytes):
        raw = bytes(element.value)
        if len(raw) == entries:
            return np.frombuffer(raw, dtype=np.uint8).astype(np.float64)
        little = getattr(ds, "original_encoding", (None, True))[1] is not False
        return np.frombuffer(raw, dtype="<u2" if little else ">u2").astype(np.float64)[:entries]
    data = element.value
    return np.asarray(data if _is_multi(data) else [data], dtype=np.float64)[:entries]
