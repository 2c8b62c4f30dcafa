"""Simple baselines SQUID must beat, scored on the same preprocessed images.

Each is a few lines of numpy/scikit-learn, which is the point: a learned anomaly detector that does
not clearly beat "how bright is the middle of the film" has not learned anatomy. Scores are oriented
like SQUID's (higher = more anomalous).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from sklearn.decomposition import PCA

from model.preprocess import preprocess

CROP_SIZE = 128
PCA_SIZE = 16
PCA_COMPONENTS = 10


def _at(images: NDArray[np.float32], size: int) -> NDArray[np.float32]:
    if images.shape[1:] == (size, size):
        return images
    return np.stack([preprocess(image, size) for image in images])


def central_crop_intensity(images: NDArray[np.float32]) -> NDArray[np.float64]:
    """Mean of the central lung field (rows 32-96, columns 24-104 of a 128 px min-max image):
    opacities make it brighter."""
    thumbs = _at(images, CROP_SIZE)
    return thumbs[:, 32:96, 24:104].mean(axis=(1, 2)).astype(np.float64)


@dataclass
class PcaResidual:
    """Squared residual of a 16 px thumbnail after projection on the normals' first 10 components."""

    pca: PCA

    @classmethod
    def fit(cls, normals: NDArray[np.float32]) -> PcaResidual:
        flat = _at(normals, PCA_SIZE).reshape(len(normals), -1)
        return cls(PCA(n_components=min(PCA_COMPONENTS, len(normals) - 1), random_state=0).fit(flat))

    def __call__(self, images: NDArray[np.float32]) -> NDArray[np.float64]:
        flat = _at(images, PCA_SIZE).reshape(len(images), -1).astype(np.float64)
        rebuilt = self.pca.inverse_transform(self.pca.transform(flat))
        return np.square(flat - rebuilt).sum(axis=1)


Scorer = Callable[[NDArray[np.float32]], NDArray[np.float64]]


def fit_baselines(normals: NDArray[np.float32]) -> dict[str, Scorer]:
    """The training-free and closed-form baselines, fitted on the training normals."""
    return {
        "central-crop intensity": central_crop_intensity,
        "PCA residual (16 px, 10 comp.)": PcaResidual.fit(normals),
    }
