"""The image-scoring steps every entry point shares: bytes -> decoded -> preprocessed -> scored.

Decoding and preprocessing run per image; inference runs on a batch. Keeping the steps apart lets the
HTTP path micro-batch requests, the batch path score chunks and the CLI score one file, with identical
results per image: the same picture as 8/16-bit PNG, MONOCHROME2 or MONOCHROME1 DICOM gives a
bit-identical network input (:mod:`model.preprocess`, configured by the artifact's own spec), and a
score does not depend on the batch it was computed in (:mod:`model.runtime`). Torch-free.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from model.domain import DomainGate, GatePolicy
from model.imaging import DecodedImage, ImageRejected, Reason, read_image
from model.imaging.reduce import min_side_for
from model.preprocess import Preprocessing
from model.runtime import ScoreResult, SquidRuntime

STRICT = DomainGate(GatePolicy())
Item = TypeVar("Item")
Result = TypeVar("Result")
# Decode threads when the caller does not say: the codecs release the GIL, more than a few
# threads per process only add memory (each holds one image being decoded).
MAX_DEFAULT_THREADS = 4


@dataclass
class Prepared:
    """One decoded, preprocessed image ready for inference, with per-step timings in ms."""

    decoded: DecodedImage
    array: NDArray[np.float32]
    timing_ms: dict[str, float] = field(default_factory=dict)


def prepare(
    data: bytes,
    preprocessing: Preprocessing | int,
    max_pixels: int,
    gate: DomainGate = STRICT,
    *,
    full_resolution: bool = False,
) -> Prepared:
    """Decode, pass the domain gate's header and image rules, preprocess; raises
    :class:`model.imaging.ImageRejected` with a reason code (:class:`~model.imaging.OutOfDomain`
    with its reasons when the gate refuses).

    ``preprocessing`` and ``gate`` are the artifact's (``runtime.preprocessing``, ``runtime.gate``);
    a bare input size means the default min-max intensity mode. The gate's image check runs after
    inference (:func:`verdict`). The image is decoded at the resolution the model needs
    (:func:`decode_side`), which scores within a few thousandths of a full-resolution decode
    (``full_resolution=True``: the reference the tests and benchmarks compare with).
    """
    prep = preprocessing if isinstance(preprocessing, Preprocessing) else Preprocessing(preprocessing)
    start = time.perf_counter()
    decoded = read_image(
        data,
        max_pixels=max_pixels,
        header_rules=gate.header_rules,
        min_side=None if full_resolution else decode_side(prep),
    )
    gate.screen(decoded)
    decoded_at = time.perf_counter()
    try:
        array = prep(decoded.pixels)
    except ValueError as exc:  # too small to resize, or not finite
        raise ImageRejected(Reason.EMPTY_IMAGE, f"image cannot be scored: {exc}") from None
    done = time.perf_counter()
    timing = {"decode": (decoded_at - start) * 1e3, "preprocess": (done - decoded_at) * 1e3}
    return Prepared(decoded, array, timing)


def decode_side(preprocessing: Preprocessing) -> int:
    """The shorter side every channel decodes at for this model (heatmap, preview and secondary
    capture are drawn from the same pixels, so none of them needs a second, larger decode)."""
    return min_side_for(preprocessing.size)


def decode_threads(requested: int = 0) -> int:
    """Threads for :func:`in_threads`: ``requested``, or the cores (at most four) when 0."""
    return requested if requested > 0 else max(1, min(MAX_DEFAULT_THREADS, os.cpu_count() or 1))


def in_threads(work: Callable[[Item], Result], items: Iterable[Item], threads: int) -> Iterator[Result]:
    """``map(work, items)`` on ``threads`` threads, results in order (one thread: no pool at all).

    Decoding spends its time in codecs that release the GIL (libjpeg-turbo, CharLS, OpenJPEG,
    numpy), so a process decodes on all its cores. ``work`` must not raise: return the failure.
    Items are taken from ``items`` (in the caller's thread) at most ``2 * threads`` ahead of the
    result being collected, so memory stays at a few images being decoded.
    """
    if threads <= 1:
        yield from map(work, items)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
        pending = []
        for item in items:
            pending.append(pool.submit(work, item))
            if len(pending) >= 2 * threads:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


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
