"""The one scoring path shared by HTTP requests and batch jobs: bytes -> decoded -> preprocessed -> score.

Decoding and preprocessing run per image; inference runs on a batch. Keeping the steps apart lets the
HTTP path micro-batch requests and the batch path score chunks, with identical results per image:

the same picture as 8/16-bit PNG, MONOCHROME2 or MONOCHROME1 DICOM gives a bit-identical network input
(``model.preprocess``), and a score does not depend on the batch it was computed in (``model.runtime``).
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from model.heatmap import overlay_png
from model.imaging import DecodedImage, ImageRejected, Reason, read_image
from model.preprocess import preprocess, unit_range
from model.runtime import ScoreResult, SquidRuntime


@dataclass
class Prepared:
    """One decoded, preprocessed image ready for inference, with per-step timings in ms."""

    decoded: DecodedImage
    array: NDArray[np.float32]
    timing_ms: dict[str, float] = field(default_factory=dict)


def prepare(data: bytes, input_size: int, max_pixels: int) -> Prepared:
    """Decode and preprocess; raises :class:`model.imaging.ImageRejected` with a reason code."""
    start = time.perf_counter()
    decoded = read_image(data, max_pixels=max_pixels)
    decoded_at = time.perf_counter()
    try:
        array = preprocess(decoded.pixels, input_size)
    except ValueError as exc:  # too small to resize, or not finite
        raise ImageRejected(Reason.EMPTY_IMAGE, f"image cannot be scored: {exc}") from None
    done = time.perf_counter()
    timing = {"decode": (decoded_at - start) * 1e3, "preprocess": (done - decoded_at) * 1e3}
    return Prepared(decoded, array, timing)


def infer(runtime: SquidRuntime, items: list[Prepared]) -> tuple[list[ScoreResult], float]:
    """Score a batch; returns the results and the inference time in ms for the whole batch."""
    if not items:
        return [], 0.0
    start = time.perf_counter()
    results = runtime.score(np.stack([item.array for item in items]))
    return results, (time.perf_counter() - start) * 1e3


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
        png = overlay_png(item.decoded.pixels, result.anomaly_map, vmax=result.map_scale)
        payload["heatmap_png_base64"] = base64.b64encode(png).decode("ascii")
    if preview:
        payload["preview_png_base64"] = base64.b64encode(preview_png(item.decoded.pixels)).decode("ascii")
    return payload


def preview_png(pixels: NDArray[Any], max_side: int = 512) -> bytes:
    """The display-ready pixels as an 8-bit gray PNG, downscaled to ``max_side`` at most."""
    gray = (unit_range(pixels) * 255.0).round().astype(np.uint8)
    image = Image.fromarray(gray)
    h, w = gray.shape
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
