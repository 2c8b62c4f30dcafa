"""Row-block evaluation of per-pixel formulas, so a full-size image never has float64 copies.

Decoders and preprocessing compute in float64 so that bit depth leaves no rounding trace; doing that
on a whole 10000x10000 radiograph costs 8 bytes per pixel per temporary. Evaluating the same
element-wise formula on blocks of rows gives bit-identical results with the temporaries bounded by
the block size (:data:`BLOCK_PIXELS`), and only the output array is full size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

BLOCK_PIXELS = 1 << 20  # ~8 MB per float64 temporary


def map_rows(
    source: NDArray[Any], formula: Callable[[NDArray[Any]], NDArray[Any]], dtype: DTypeLike
) -> NDArray[Any]:
    """``formula(source)`` cast to ``dtype``, evaluated a block of rows at a time (first axis = rows)."""
    out = np.empty(source.shape[:2], dtype=dtype)
    step = max(1, BLOCK_PIXELS // max(1, int(np.prod(source.shape[1:2]))))
    for start in range(0, source.shape[0], step):
        out[start : start + step] = formula(source[start : start + step])
    return out


def row_blocks(source: NDArray[Any]) -> list[slice]:
    """The row slices :func:`map_rows` uses, for reductions done block by block."""
    step = max(1, BLOCK_PIXELS // max(1, int(np.prod(source.shape[1:2]))))
    return [slice(start, start + step) for start in range(0, source.shape[0], step)]
