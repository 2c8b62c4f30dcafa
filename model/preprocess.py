"""The one preprocessing function, shared by training, export checks, HTTP scoring and batch jobs.

Its input is a display-ready grayscale image (after DICOM LUTs and photometric inversion, or a decoded
PNG/JPEG): any size, any numeric dtype, brighter = more attenuating. Its output is the network input.
Min-max normalisation after resizing makes the result independent of bit depth and of any affine
intensity mapping, so the same picture as 8-bit PNG, 16-bit DICOM or inverted MONOCHROME1 DICOM gives
the same array.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

PREPROCESSING_VERSION = 1


def preprocessing_spec(size: int) -> dict[str, Any]:
    """What :func:`preprocess` does, written into the artifact so a consumer can check it."""
    return {
        "version": PREPROCESSING_VERSION,
        "input": "grayscale, display-ready (VOI/presentation LUTs applied, MONOCHROME1 inverted)",
        "resize": {"size": [size, size], "method": "PIL bilinear (antialiased), aspect not kept"},
        "intensity": "per-image min-max to [0, 1] before and after resizing; constant images map to 0",
        "dtype": "float32",
        "layout": "NCHW, C=1",
    }


def unit_range(pixels: NDArray[Any]) -> NDArray[np.float32]:
    """Min-max to [0, 1], computed in float64 so decoders' intensity scales leave no rounding trace.

    A constant image becomes zeros.
    """
    values = np.asarray(pixels, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if not high > low:
        return np.zeros(values.shape, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def preprocess(image: NDArray[Any], size: int) -> NDArray[np.float32]:
    """2-D grayscale array -> (size, size) float32 in [0, 1].

    Normalising before resizing makes the network input bit-identical for the same picture at any
    bit depth or polarity; normalising again after resizing restores the full [0, 1] range.
    """
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
    low, high = float(pixels.min()), float(pixels.max())
    if high - low < 1e-12:
        return np.zeros((size, size), dtype=np.float32)
    return ((pixels - low) / (high - low)).astype(np.float32)


def to_batch(images: list[NDArray[np.float32]]) -> NDArray[np.float32]:
    """Stack preprocessed images into the (N, 1, H, W) network input."""
    return np.stack(images)[:, None].astype(np.float32, copy=False)
