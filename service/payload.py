"""The HTTP answer of a scored image: the JSON body, the heatmap overlay and the input preview.

The scoring steps themselves (``prepare``, ``infer``) are shared with the CLI, the batch jobs and the
benchmarks and live in :mod:`model.steps`.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from model.blockwise import map_rows
from model.heatmap import PNG_COMPRESS_LEVEL, overlay_png
from model.runtime import ScoreResult, SquidRuntime
from model.steps import Prepared


def result_payload(
    runtime: SquidRuntime, item: Prepared, result: ScoreResult, heatmap: bool, preview: bool = False
) -> dict[str, Any]:
    """The JSON body of a scored image (no patient identifiers: ``info`` carries none).

    ``heatmap`` adds the overlay PNG, ``preview`` the decoded input as a gray PNG (what the model saw,
    before resizing), both base64-encoded and at most 512 pixels on the long side.
    """
    meta = runtime.metadata
    info = item.decoded.info.to_dict()
    payload: dict[str, Any] = {
        "score": result.score,
        "is_anomalous": result.is_anomalous,
        "threshold": result.threshold,
        "raw_score": result.raw_score,
        "model": {"name": meta.model_name, "version": meta.model_version, "sha256": meta.weights_sha256},
        "input": info,
        "warnings": list(item.decoded.warnings),
        "timing_ms": {k: round(v, 3) for k, v in item.timing_ms.items()},
    }
    if heatmap:
        png = overlay_png(item.decoded.pixels, result.map_or_raise(), vmax=result.map_scale)
        payload["heatmap_png_base64"] = base64.b64encode(png).decode("ascii")
    if preview:
        payload["preview_png_base64"] = base64.b64encode(preview_png(item.decoded.pixels)).decode("ascii")
    return payload


def preview_png(pixels: NDArray[Any], max_side: int = 512) -> bytes:
    """The display-ready pixels as an 8-bit gray PNG, downscaled to ``max_side`` at most."""
    low, high = float(np.min(pixels)), float(np.max(pixels))

    def to_uint8(rows: NDArray[Any]) -> NDArray[np.uint8]:  # unit_range, then 8 bits, by row blocks
        unit = ((rows.astype(np.float64) - low) / (high - low)).astype(np.float32)
        return (unit * 255.0).round().astype(np.uint8)

    gray = map_rows(pixels, to_uint8, np.uint8) if high > low else np.zeros(pixels.shape, np.uint8)
    image = Image.fromarray(gray)
    h, w = gray.shape
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def thumbnail_png(pixels: NDArray[Any], side: int) -> bytes:
    """:func:`preview_png` at ``side`` pixels, from every k-th pixel of a large image: the resize
    still averages over about four source pixels per thumbnail pixel, at a fraction of the cost of
    converting all of a full-size radiograph first."""
    step = max(1, min(pixels.shape) // (side * 4))
    return preview_png(pixels[::step, ::step], side)
