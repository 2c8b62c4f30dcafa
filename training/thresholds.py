"""Decision thresholds, always chosen on a validation split, never on test data."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from training.metrics import metrics_at

RULES = ("f1_optimal", "normal_percentile")


@dataclass(frozen=True)
class Threshold:
    """A threshold on the calibrated score and the rule that produced it."""

    value: float
    rule: str
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def f1_optimal(labels: ArrayLike, scores: ArrayLike) -> Threshold:
    """The score threshold maximising F1 on labelled validation data (ties: the higher threshold)."""
    y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if y.min() == y.max():
        raise ValueError("f1_optimal needs both normal and anomalous validation images")
    best = max((metrics_at(y, s, float(t)) for t in np.unique(s)), key=lambda m: (m.f1, m.threshold))
    return Threshold(best.threshold, "f1_optimal", {"validation_f1": best.f1, "n": len(y)})


def normal_percentile(normal_scores: ArrayLike, percentile: float = 99.0) -> Threshold:
    """For users with no labelled abnormals: flag what exceeds the given percentile of normals."""
    s = np.asarray(normal_scores, dtype=np.float64)
    value = float(np.percentile(s, percentile))
    return Threshold(value, "normal_percentile", {"percentile": percentile, "n_normal": len(s)})


def choose(rule: str, labels: ArrayLike, scores: ArrayLike, percentile: float = 99.0) -> Threshold:
    y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if rule == "f1_optimal":
        return f1_optimal(y, s)
    if rule == "normal_percentile":
        return normal_percentile(s[y == 0], percentile)
    raise ValueError(f"unknown threshold rule {rule!r}; choose one of {RULES}")
