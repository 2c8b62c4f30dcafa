"""Simple baselines SQUID must beat, scored on the same films.

Each is a few lines of numpy/scikit-learn, which is the point: a learned anomaly detector that does
not clearly beat "how bright is the middle of the film" has not learned anatomy. Each baseline says
which preprocessing it reads (its size and intensity mode), so that the comparison does not depend on
the model's own preprocessing. Scores are oriented like SQUID's (higher = more anomalous).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from sklearn.decomposition import PCA

from model.preprocess import preprocess
from training.films import Films

CROP_SIZE = 128
PCA_SIZE = 16
PCA_COMPONENTS = 10
ATLAS_SIZE = 64
ATLAS_STD_FLOOR = 0.02


def _at(images: NDArray[np.float32], size: int) -> NDArray[np.float32]:
    if images.shape[1:] == (size, size):
        return images
    return np.stack([preprocess(image, size) for image in images])


def central_crop_intensity(images: NDArray[np.float32]) -> NDArray[np.float64]:
    """Mean of the central lung field (rows 32-96, columns 24-104 of a 128 px image):
    opacities make it brighter."""
    thumbs = _at(images, CROP_SIZE)
    return thumbs[:, 32:96, 24:104].mean(axis=(1, 2)).astype(np.float64)


@dataclass
class PcaResidual:
    """Squared residual of a 16 px min-max thumbnail after projection on the normals' first 10
    components."""

    pca: PCA

    @classmethod
    def fit(cls, normals: Films) -> PcaResidual:
        flat = normals.at(PCA_SIZE).reshape(len(normals), -1)
        return cls(PCA(n_components=min(PCA_COMPONENTS, len(normals) - 1), random_state=0).fit(flat))

    def __call__(self, films: Films) -> NDArray[np.float64]:
        flat = films.at(PCA_SIZE).reshape(len(films), -1).astype(np.float64)
        rebuilt = self.pca.inverse_transform(self.pca.transform(flat))
        return np.square(flat - rebuilt).sum(axis=1)


@dataclass
class PixelAtlas:
    """A position-aware baseline: each pixel of a 64 px equalised film against the training normals'
    mean and spread at that pixel; the score is the mean squared z.

    It knows where bright and dark belong (a mirrored film puts the heart where the normals have
    lung) but nothing about texture or shape.
    """

    mean: NDArray[np.float32]
    std: NDArray[np.float32]

    @classmethod
    def fit(cls, normals: Films) -> PixelAtlas:
        images = normals.at(ATLAS_SIZE, "equalize")
        return cls(images.mean(axis=0), images.std(axis=0) + ATLAS_STD_FLOOR)

    def __call__(self, films: Films) -> NDArray[np.float64]:
        z = (films.at(ATLAS_SIZE, "equalize") - self.mean) / self.std
        return np.square(z, dtype=np.float64).mean(axis=(1, 2))


FilmScorer = Callable[[Films], NDArray[np.float64]]


def central_crop(intensity: str) -> FilmScorer:
    return lambda films: central_crop_intensity(films.at(CROP_SIZE, intensity))


def fit_baselines(normals: Films) -> dict[str, FilmScorer]:
    """The training-free and closed-form baselines, fitted on the training normals."""
    return {
        "central-crop intensity (min-max)": central_crop("minmax"),
        "central-crop intensity (equalised)": central_crop("equalize"),
        "PCA residual (16 px min-max, 10 comp.)": PcaResidual.fit(normals),
        "per-pixel atlas (64 px equalised)": PixelAtlas.fit(normals),
    }
