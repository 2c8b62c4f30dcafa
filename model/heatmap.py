"""Render an anomaly map as a colour overlay on the X-ray: RGB pixels or PNG bytes (numpy + Pillow)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from model.blockwise import map_rows

# zlib level for PNGs drawn per request (heatmap, preview): fast, a little larger than the best.
PNG_COMPRESS_LEVEL = 1

# Anchor colours of a perceptually ordered "inferno"-like map, dark (low) to bright (high).
_ANCHORS = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float32,
)


def colourise(values: NDArray[np.float32]) -> NDArray[np.uint8]:
    """Map values in [0, 1] to RGB."""
    scaled = np.clip(values, 0, 1) * (len(_ANCHORS) - 1)
    low = np.floor(scaled).astype(int)
    high = np.minimum(low + 1, len(_ANCHORS) - 1)
    frac = (scaled - low)[..., None]
    return (_ANCHORS[low] * (1 - frac) + _ANCHORS[high] * frac).astype(np.uint8)


def overlay_png(
    image: NDArray[Any],
    anomaly_map: NDArray[np.float32],
    alpha: float = 0.45,
    max_side: int = 512,
    vmax: float | None = None,
) -> bytes:
    """:func:`overlay_rgb` as PNG bytes, compressed for speed: it is drawn per request, where
    Pillow's ``optimize`` cost ten times the time for a file about 15 % smaller."""
    buffer = io.BytesIO()
    Image.fromarray(overlay_rgb(image, anomaly_map, alpha, max_side, vmax)).save(
        buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL
    )
    return buffer.getvalue()


def overlay_rgb(
    image: NDArray[Any],
    anomaly_map: NDArray[np.float32],
    alpha: float = 0.45,
    max_side: int = 512,
    vmax: float | None = None,
) -> NDArray[np.uint8]:
    """The X-ray in gray with the anomaly map blended on top, at up to ``max_side`` pixels (RGB).

    Colour and opacity grow with ``map / vmax`` clipped to [0, 1]: pixels at or below 0 (no more
    evidence for "anomalous" than the training normals' average) keep the plain X-ray. ``vmax`` is
    the artifact's fixed scale (``ScoreResult.map_scale``) so a colour means the same amount of
    evidence on every image; without one (an old residual-map artifact) the map's own maximum.
    """
    low, high = float(np.min(image)), float(np.max(image))

    def to_uint8(rows: NDArray[Any]) -> NDArray[np.uint8]:  # by row blocks: no full-size float copies
        gray = np.asarray(rows, dtype=np.float32)
        gray = (gray - low) / (high - low) if high > low else np.zeros_like(gray)
        return (gray * 255).astype(np.uint8)

    h, w = image.shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    base = Image.fromarray(map_rows(image, to_uint8, np.uint8)).resize(size, Image.Resampling.BILINEAR)
    top = float(vmax if vmax is not None else anomaly_map.max())
    heat = anomaly_map / top if top > 0 else np.zeros_like(anomaly_map)
    heat_img = Image.fromarray(heat.astype(np.float32)).resize(size, Image.Resampling.BILINEAR)
    heat_px = np.clip(np.asarray(heat_img), 0, 1)
    coloured = colourise(heat_px)
    base_rgb = np.repeat(np.asarray(base)[..., None], 3, axis=2).astype(np.float32)
    weight = alpha * heat_px[..., None]
    blended = (1 - weight) * base_rgb + weight * coloured.astype(np.float32)
    return blended.clip(0, 255).astype(np.uint8)


def map_layer_png(
    anomaly_map: NDArray[np.float32], size: tuple[int, int], vmax: float | None = None
) -> bytes:
    """The map alone as an RGBA PNG of ``size`` (width, height): the colours of :func:`overlay_rgb`
    with the evidence as alpha, so a viewer stacks it on the film and sets its opacity (at 0.45 it
    looks like the overlay). Transparent where the image is no less normal than the normals."""
    top = float(vmax if vmax is not None else anomaly_map.max())
    heat = anomaly_map / top if top > 0 else np.zeros_like(anomaly_map)
    heat_img = Image.fromarray(heat.astype(np.float32)).resize(size, Image.Resampling.BILINEAR)
    heat_px = np.clip(np.asarray(heat_img), 0, 1)
    rgba = np.concatenate([colourise(heat_px), (heat_px * 255).round().astype(np.uint8)[..., None]], axis=2)
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
