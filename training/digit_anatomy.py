"""DigitAnatomy (thesis section 3.8, Algorithm 1): digits 1-9 in a 3x3 grid, with anatomy anomalies.

A normal image puts a random MNIST sample of digit d in cell d. An abnormal image breaks the
anatomy cell by cell: a missing digit, a misordered digit, a flipped digit or a zero.
The authors' test images are not public; this generator follows Algorithm 1 and is seeded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

ANOMALIES = ("missing", "misorder", "flip", "zero")
CELL = 32


def load_mnist(folder: Path) -> dict[int, NDArray[np.uint8]]:
    """Per-digit arrays ``{digit: (N, 28, 28) uint8}`` from ``folder/{0..9}.npy``."""
    digits = {d: np.load(Path(folder) / f"{d}.npy") for d in range(10)}
    for d, arr in digits.items():
        if arr.ndim != 3 or arr.shape[1:] != (28, 28):
            raise ValueError(f"{folder}/{d}.npy: expected (N, 28, 28), got {arr.shape}")
    return digits


def _cell(digit_image: NDArray[np.uint8], rng: np.random.Generator) -> NDArray[np.float32]:
    """A digit zoomed in by a random area fraction in [0.6, 1] and resized to the cell size."""
    area = rng.uniform(0.6, 1.0)
    side = max(8, round(28 * np.sqrt(area)))
    top, left = rng.integers(0, 28 - side + 1, size=2)
    crop = Image.fromarray(digit_image[top : top + side, left : left + side])
    return np.asarray(crop.resize((CELL, CELL), Image.Resampling.BILINEAR), np.float32) / 255.0


def make_image(
    digits: dict[int, NDArray[np.uint8]], rng: np.random.Generator, anomalous: bool
) -> NDArray[np.float32]:
    """One 96x96 image in [0, 1].

    As in Algorithm 1, an anomalous image draws each cell's condition uniformly from
    {normal, missing, misorder, flip, zero}; at least one cell is broken.
    """
    broken: dict[int, str] = {}
    while anomalous and not broken:
        for cell in range(9):
            kind = str(rng.choice(("normal", *ANOMALIES)))
            if kind != "normal":
                broken[cell] = kind
    image = np.zeros((3 * CELL, 3 * CELL), np.float32)
    for cell in range(9):
        digit = cell + 1
        kind = broken.get(cell, "normal")
        if kind == "missing":
            continue
        if kind == "misorder":
            digit = int(rng.choice([d for d in range(1, 10) if d != cell + 1]))
        if kind == "zero":
            digit = 0
        pool = digits[digit]
        patch = _cell(pool[rng.integers(len(pool))], rng)
        if kind == "flip":
            patch = patch[::-1] if rng.random() < 0.5 else patch[:, ::-1]
        r, c = divmod(cell, 3)
        image[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = patch
    return image


def make_set(
    digits: dict[int, NDArray[np.uint8]], n_normal: int, n_anomalous: int, seed: int
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """A labelled set of images (normals first)."""
    rng = np.random.default_rng(seed)
    images = [make_image(digits, rng, False) for _ in range(n_normal)]
    images += [make_image(digits, rng, True) for _ in range(n_anomalous)]
    labels = np.array([0] * n_normal + [1] * n_anomalous, dtype=np.int64)
    return np.stack(images), labels


def split_pools(
    digits: dict[int, NDArray[np.uint8]], fraction: float
) -> tuple[dict[int, NDArray[np.uint8]], dict[int, NDArray[np.uint8]]]:
    """Disjoint MNIST samples for training and for evaluation images."""
    first, second = {}, {}
    for d, arr in digits.items():
        cut = int(len(arr) * fraction)
        first[d], second[d] = arr[:cut], arr[cut:]
    return first, second
