"""The image-scoring steps every entry point shares: bytes -> decoded -> preprocessed -> scored.

Decoding and preprocessing run per image; inference runs on a batch. Keeping the steps apart lets the
HTTP path micro-batch requests, the batch path score chunks and the CLI score one file, with identical
results per image: the same picture as 8/16-bit PNG, MONOCHROME2 or MONOCHROME1 DICOM gives a
bit-identical network input (:mod:`model.preprocess`, configured by the artifact's own spec), and a
score does not depend on the batch it was computed in (:mod:`model.runtime`). Torch-free.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from model.domain import DomainGate, GatePolicy
from model.imaging import DecodedImage, ImageRejected, Reason, read_image
from model.preprocess import Preprocessing
from model.runtime import ScoreResult, SquidRuntime

STRICT = DomainGate(GatePolicy())


@dataclass
class Prepared:
    """One decoded, preprocessed image ready for inference, with per-step timings in ms."""

    decoded: DecodedImage
    array: NDArray[np.float32]
    timing_ms: dict[str, float] = field(default_factory=dict)


def prepare(
    data: bytes, preprocessing: Preprocessing | int, max_pixels: int, gate: DomainGate = STRICT
) -> Prepared:
    """Decode, pass the domain gate's header and image rules, preprocess; raises
    :class:`model.imaging.ImageRejected` with a reason code (:class:`~model.imaging.OutOfDomain`
    with its reasons when the gate refuses).

    ``preprocessing`` and ``gate`` are the artifact's (``runtime.preprocessing``, ``runtime.gate``);
    a bare input size means the default min-max intensity mode. The gate's image check runs after
    inference (:func:`verdict`).
    """
    prep = preprocessing if isinstance(preprocessing, Preprocessing) else Preprocessing(preprocessing)
    start = time.perf_counter()
    decoded = read_image(data, max_pixels=max_pixels, header_rules=gate.header_rules)
    gate.screen(decoded)
    decoded_at = time.perf_counter()
    try:
        array = prep(decoded.pixels)
    except ValueError as exc:  # too small to resize, or not finite
        raise ImageRejected(Reason.EMPTY_IMAGE, f"image cannot be scored: {exc}") from None
    done = time.perf_counter()
    timing = {"decode": (decoded_at - start) * 1e3, "preprocess": (done - decoded_at) * 1e3}
    return Prepared(decoded, array, timing)


def infer(
    runtime: SquidRuntime, items: list[Prepared], with_map: bool = True
) -> tuple[list[ScoreResult], float]:
    """Score a batch; returns the results and the inference time in ms for the whole batch.

    ``with_map=False`` when no one will look at the anomaly maps: it is most of an image's cost.
    """
    if not items:
        return [], 0.0
    start = time.perf_counter()
    results = runtime.score(np.stack([item.array for item in items]), with_map=with_map)
    return results, (time.perf_counter() - start) * 1e3


def verdict(gate: DomainGate, item: Prepared, result: ScoreResult) -> ScoreResult:
    """The result, once the gate's image check accepts what the model saw (raises
    :class:`~model.imaging.OutOfDomain` otherwise, or adds its warning when advisory)."""
    gate.judge(item.decoded, result.domain_distance)
    return result
