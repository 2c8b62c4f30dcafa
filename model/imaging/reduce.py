"""How far an image may be shrunk before the model can tell, and box reduction by row blocks.

The model sees a 128 px image; a radiograph has 2,000-4,000 px a side. Decoding is therefore done
at a reduced resolution whose shorter side is still at least ``min_side`` (four times the model's
input, and never under the 512 px the heatmap and preview are drawn at: :func:`min_side_for`): by
the codec where it can (one JPEG 2000 resolution level, JPEG DCT scaling), then by averaging
``factor x factor`` boxes of decoded pixels. The preprocessing's own antialiased resize then
finishes the job. The reduction blurs a little more than that resize alone, so the calibrated score
moves by a few thousandths (docs/decoding.md; ``tests/model/test_reduced_decode.py`` holds it
within 0.01); at three times the model's input a clipping window moved it by 0.0104.

Box means are computed by summing groups of rows, then groups of columns, in an integer (or
float64) accumulator; partial groups at the bottom and right edges are averaged over the pixels
they have, so nothing is cropped. Per-pixel formulas that must run before the reduction (a LUT
that is not affine) run on blocks of rows, so no full-size float copy is ever made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model.blockwise import BLOCK_PIXELS

DEFAULT_MIN_SIDE = 512
# The smallest shorter side of a reduced decode per pixel of the model's input side.
MIN_SIDE_PER_INPUT_PIXEL = 4

FloatArray = NDArray[np.float64]


def min_side_for(input_size: int) -> int:
    """The shorter side a decode for a model of ``input_size`` px must keep."""
    return max(DEFAULT_MIN_SIDE, MIN_SIDE_PER_INPUT_PIXEL * input_size)


def box_factor(rows: int, columns: int, min_side: int | None) -> int:
    """The largest integer factor that keeps the shorter side at least ``min_side`` (1: none)."""
    if not min_side:
        return 1
    return max(1, min(rows, columns) // min_side)


def power_of_two_steps(rows: int, columns: int, min_side: int | None, most: int) -> int:
    """How many halvings (at most ``most``) keep the shorter side, rounded up, at least ``min_side``."""
    steps = 0
    while min_side and steps < most and -(-min(rows, columns) // (2 << steps)) >= min_side:
        steps += 1
    return steps


def reduced_shape(rows: int, columns: int, factor: int) -> tuple[int, int]:
    return -(-rows // factor), -(-columns // factor)


def box_mean(source: NDArray[Any], factor: int) -> FloatArray:
    """Mean of each ``factor x factor`` box of a 2-D array (edge boxes: of the pixels they hold),
    a block of whole box rows at a time, so the accumulators stay small."""
    if factor == 1:
        return np.asarray(source, dtype=np.float64)
    rows, columns = source.shape
    out = np.empty(reduced_shape(rows, columns, factor), dtype=np.float64)
    step = _block_rows(columns, factor)
    for start in range(0, rows, step):
        block = source[start : start + step]
        sums = _box_sums(block, factor)
        out[start // factor : start // factor + sums.shape[0]] = sums / _box_counts(
            block.shape[0], columns, factor
        )
    return out


def map_then_reduce(
    source: NDArray[Any], formula: Callable[[NDArray[Any]], FloatArray], factor: int
) -> FloatArray:
    """``box_mean(formula(source), factor)`` with ``formula`` run on blocks of whole box rows.

    For per-pixel formulas that do not commute with averaging (clipping windows, lookup tables,
    colour to gray): exact, and the only full-size array is ``source`` itself.
    """
    rows, columns = source.shape[0], source.shape[1]
    out = np.empty(reduced_shape(rows, columns, factor), dtype=np.float64)
    step = _block_rows(columns, factor)
    for start in range(0, rows, step):
        values = formula(source[start : start + step])
        out[start // factor : start // factor + -(-values.shape[0] // factor)] = box_mean(values, factor)
    return out


def _block_rows(columns: int, factor: int) -> int:
    """Rows per block: a whole number of box rows, about :data:`BLOCK_PIXELS` pixels."""
    return max(1, BLOCK_PIXELS // max(1, columns * factor)) * factor


def _box_sums(source: NDArray[Any], factor: int) -> NDArray[Any]:
    rows, columns = source.shape
    accumulator = _accumulator(source.dtype, factor)
    full_rows, full_columns = rows // factor, columns // factor
    by_rows = np.empty((-(-rows // factor), columns), dtype=accumulator)
    by_rows[:full_rows] = (
        source[: full_rows * factor].reshape(full_rows, factor, columns).sum(axis=1, dtype=accumulator)
    )
    if rows % factor:
        by_rows[full_rows] = source[full_rows * factor :].sum(axis=0, dtype=accumulator)
    sums = np.empty((by_rows.shape[0], -(-columns // factor)), dtype=accumulator)
    sums[:, :full_columns] = (
        by_rows[:, : full_columns * factor]
        .reshape(by_rows.shape[0], full_columns, factor)
        .sum(axis=2, dtype=accumulator)
    )
    if columns % factor:
        sums[:, full_columns] = by_rows[:, full_columns * factor :].sum(axis=1, dtype=accumulator)
    return sums


def _accumulator(dtype: np.dtype[Any], factor: int) -> type[np.generic]:
    """An integer accumulator that cannot overflow for integer pixels, float64 otherwise."""
    if dtype.kind in "ub" and dtype.itemsize <= 2 and factor <= 256:
        return np.uint32
    if dtype.kind in "iub" and dtype.itemsize <= 4:
        return np.int64
    return np.float64


def _box_counts(rows: int, columns: int, factor: int) -> FloatArray:
    def counts(size: int) -> FloatArray:
        values = np.full(-(-size // factor), float(factor))
        if size % factor:
            values[-1] = size % factor
        return values

    return np.outer(counts(rows), counts(columns))
