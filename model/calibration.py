"""Turning a raw discriminator logit into a calibrated anomaly score (thesis Eq. 3.5).

Pure numpy so the training side and the torch-free runtime share one definition.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray


@dataclass(frozen=True)
class Calibration:
    """``A = sigmoid(orientation * (raw - mu) / sigma)``.

    The discriminator's logit is high for images it believes are real, i.e. normal, so the
    orientation is -1: higher A means more anomalous. mu and sigma are the mean and standard
    deviation of raw scores over the un-augmented training normals.
    """

    mu: float
    sigma: float
    orientation: int = -1

    def __post_init__(self) -> None:
        if not np.isfinite(self.mu) or not np.isfinite(self.sigma) or self.sigma <= 0:
            raise ValueError(f"invalid calibration mu={self.mu} sigma={self.sigma}")
        if self.orientation not in (-1, 1):
            raise ValueError("orientation must be -1 or +1")

    @classmethod
    def fit(cls, raw_normal_scores: ArrayLike, orientation: int = -1) -> Calibration:
        raw = np.asarray(raw_normal_scores, dtype=np.float64)
        return cls(float(raw.mean()), float(max(raw.std(), 1e-8)), orientation)

    def apply(self, raw: ArrayLike) -> NDArray[np.float64]:
        z = self.orientation * (np.asarray(raw, dtype=np.float64) - self.mu) / self.sigma
        return np.exp(-np.logaddexp(0.0, -z))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
