"""Decision thresholds, always chosen on a validation split, never on test data."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from training.metrics import metrics_at

RULES = ("f1_optimal", "normal_percentile", "specificity")


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


def at_specificity(labels: ArrayLike, scores: ArrayLike, specificity: float = 0.90) -> Threshold:
    """The lowest threshold that keeps at least ``specificity`` of the labelled normals below it:
    the most sensitive operating point that still meets a specificity target."""
    y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    normals = np.sort(s[y == 0])
    if not len(normals):
        raise ValueError("a specificity threshold needs labelled normal images")
    if not 0.0 < specificity <= 1.0:
        raise ValueError("specificity must be in (0, 1]")
    allowed = int(np.floor(len(normals) * (1.0 - specificity) + 1e-9))
    # Scores >= t are called anomalous; at most `allowed` normals may reach t.
    value = float(np.nextafter(normals[len(normals) - allowed - 1], np.inf))
    reached = float((normals < value).mean())
    return Threshold(
        value, "specificity", {"target": specificity, "specificity": reached, "n_normal": len(normals)}
    )


def choose(
    rule: str, labels: ArrayLike, scores: ArrayLike, percentile: float = 99.0, specificity: float = 0.90
) -> Threshold:
    y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if rule == "f1_optimal":
        return f1_optimal(y, s)
    if rule == "normal_percentile":
        return normal_percentile(s[y == 0], percentile)
    if rule == "specificity":
        return at_specificity(y, s, specificity)
    raise ValueError(f"unknown threshold rule {rule!r}; choose one of {RULES}")
