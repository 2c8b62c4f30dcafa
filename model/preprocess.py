"""The one preprocessing function, shared by training, export checks, HTTP scoring and batch jobs.

Its input is a display-ready grayscale image (after DICOM LUTs and photometric inversion, or a decoded
PNG/JPEG): any size, any numeric dtype, brighter = more attenuating. Its output is the network input.
Min-max normalisation after resizing makes the result independent of bit depth and of any affine
intensity mapping, so the same picture as 8-bit PNG, 16-bit DICOM or inverted MONOCHROME1 DICOM gives
the same array. Two other intensity modes make the input robust to exposure and haze: ``percentile``
stretches the 1st-99th percentile range to [0, 1] (a burned-in label or a black border no longer
decides the contrast of the lungs), ``equalize`` maps every pixel to its rank (histogram
equalisation), so that only where bright and dark tissue lie remains, not how bright the film is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from model.blockwise import map_rows

PREPROCESSING_VERSION = 2
INTENSITY_MODES = ("minmax", "percentile", "equalize")
PERCENTILES = (1.0, 99.0)

_INTENSITY_TEXT = {
    "minmax": "per-image min-max to [0, 1] before and after resizing; constant images map to 0",
    "percentile": "per-image min-max before resizing, then the 1st-99th percentile range of the resized "
    "image stretched to [0, 1] and clipped; constant images map to 0",
    "equalize": "per-image min-max before resizing, then each pixel of the resized image replaced by its "
    "mid-rank (ties averaged) divided by the pixel count, min-max to [0, 1]; constant images map to 0",
}


def preprocessing_spec(size: int, intensity: str = "minmax") -> dict[str, Any]:
    """What :func:`preprocess` does, written into the artifact so a consumer can check it."""
    _check_mode(intensity)
    return {
        "version": PREPROCESSING_VERSION,
        "input": "grayscale, display-ready (VOI/presentation LUTs applied, MONOCHROME1 inverted)",
        "resize": {"size": [size, size], "method": "PIL bilinear (antialiased), aspect not kept"},
        "intensity_mode": intensity,
        "intensity": _INTENSITY_TEXT[intensity],
        "dtype": "float32",
        "layout": "NCHW, C=1",
    }


def intensity_mode(spec: dict[str, Any]) -> str:
    """The intensity mode an artifact's preprocessing spec asks for (version 1 specs: min-max)."""
    mode = str(spec.get("intensity_mode", "minmax"))
    _check_mode(mode)
    return mode


def _check_mode(mode: str) -> None:
    if mode not in INTENSITY_MODES:
        raise ValueError(f"unknown intensity mode {mode!r}; choose one of {INTENSITY_MODES}")


def unit_range(pixels: NDArray[Any]) -> NDArray[np.float32]:
    """Min-max to [0, 1], computed in float64 so decoders' intensity scales leave no rounding trace.

    A constant image becomes zeros. Evaluated by row blocks (:mod:`model.blockwise`): the only
    full-size allocation is the float32 result.
    """
    values = np.asarray(pixels)
    low, high = float(values.min()), float(values.max())
    if not high > low:
        return np.zeros(values.shape, dtype=np.float32)
    if values.ndim != 2:
        return ((values.astype(np.float64) - low) / (high - low)).astype(np.float32)
    return map_rows(values, lambda block: (block.astype(np.float64) - low) / (high - low), np.float32)


def preprocess(image: NDArray[Any], size: int, intensity: str = "minmax") -> NDArray[np.float32]:
    """2-D grayscale array -> (size, size) float32 in [0, 1].

    Normalising before resizing makes the network input bit-identical for the same picture at any
    bit depth or polarity; normalising again after resizing restores the full [0, 1] range.
    """
    _check_mode(intensity)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"image too small to score: {image.shape}")
    if not np.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values")
    pixels = unit_range(image)
    if pixels.shape != (size, size):
        pixels = np.asarray(
            Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR),
            dtype=np.float32,
        )
    if intensity == "equalize":
        pixels = _equalize(pixels)
    if intensity == "percentile":
        low, high = (float(v) for v in np.percentile(pixels, PERCENTILES))
    else:
        low, high = float(pixels.min()), float(pixels.max())
    if high - low < 1e-12:
        return np.zeros((size, size), dtype=np.float32)
    return np.clip((pixels - low) / (high - low), 0.0, 1.0).astype(np.float32)


def _equalize(pixels: NDArray[np.float32]) -> NDArray[np.float32]:
    """Histogram equalisation by mid-ranks: equal values stay equal, the result is uniform."""
    _, inverse, counts = np.unique(pixels, return_inverse=True, return_counts=True)
    midranks = np.cumsum(counts) - counts / 2.0
    return (midranks[inverse.reshape(pixels.shape)] / pixels.size).astype(np.float32)


@dataclass(frozen=True)
class Preprocessing:
    """The preprocessing of one model: input size and intensity mode, as its artifact records them."""

    size: int
    intensity: str = "minmax"

    def __post_init__(self) -> None:
        _check_mode(self.intensity)

    def __call__(self, image: NDArray[Any]) -> NDArray[np.float32]:
        return preprocess(image, self.size, self.intensity)

    def spec(self) -> dict[str, Any]:
        return preprocessing_spec(self.size, self.intensity)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], size: int) -> Preprocessing:
        return cls(size, intensity_mode(spec))
