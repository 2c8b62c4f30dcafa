"""Display-ready films held once and preprocessed on demand, so that every method compared on them
(SQUID and each baseline, with its own size and intensity mode) reads the same pixels."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from tqdm import tqdm

from model.preprocess import preprocess

# Films larger than this are kept at this size (longer side): the model and the baselines look at
# 128 px or less, and a few hundred full-size radiographs would not fit in memory.
MAX_SIDE = 1024

Film = NDArray[np.float32]


def reduce_film(pixels: NDArray[np.floating]) -> Film:
    """A display-ready film as float32, its longer side at most :data:`MAX_SIDE` pixels."""
    film = np.asarray(pixels, dtype=np.float32)
    h, w = film.shape
    if max(h, w) <= MAX_SIDE:
        return film
    scale = MAX_SIDE / max(h, w)
    size = (max(2, round(w * scale)), max(2, round(h * scale)))
    return np.asarray(Image.fromarray(film).resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


class Films:
    """A list of films with their preprocessed arrays cached per (size, intensity mode)."""

    def __init__(self, films: Sequence[NDArray[np.floating]]) -> None:
        self.films = [np.asarray(f, dtype=np.float32) for f in films]
        self._cache: dict[tuple[int, str], NDArray[np.float32]] = {}

    def __len__(self) -> int:
        return len(self.films)

    def at(self, size: int, intensity: str = "minmax") -> NDArray[np.float32]:
        """(N, size, size) network inputs, exactly as serving preprocesses them."""
        key = (size, intensity)
        if key not in self._cache:
            out = np.empty((len(self.films), size, size), dtype=np.float32)
            for i, film in enumerate(self.films):
                out[i] = preprocess(film, size, intensity)
            self._cache[key] = out
        return self._cache[key]


def load_films(
    paths: Sequence[str | os.PathLike[str]], progress: bool = True, desc: str = "loading"
) -> Films:
    """Decode files through the serving reader into display-ready films."""
    from model.imaging import read_path

    return Films(
        [reduce_film(read_path(p).pixels) for p in tqdm(paths, desc=desc, disable=not progress, unit="img")]
    )
