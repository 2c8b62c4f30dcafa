"""Binary classification metrics in numpy (label 1 = anomalous, higher score = more anomalous)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray


def _arrays(labels: ArrayLike, scores: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    y = np.asarray(labels).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError("labels and scores must be 1-D arrays of equal length")
    return y, s


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve via the Mann-Whitney statistic (ties count one half)."""
    y, s = _arrays(labels, scores)
    pos, neg = int(y.sum()), int((1 - y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_scores = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[NDArray[np.float64], ...]:
    """False positive rates, true positive rates and the thresholds (predict 1 when score >= t)."""
    y, s = _arrays(labels, scores)
    thresholds = np.concatenate([[np.inf], np.unique(s)[::-1]])
    tpr = np.array([(s[y == 1] >= t).mean() for t in thresholds])
    fpr = np.array([(s[y == 0] >= t).mean() for t in thresholds])
    return fpr, tpr, thresholds


def pr_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[NDArray[np.float64], ...]:
    """Precision and recall at every distinct score threshold, highest threshold first."""
    y, s = _arrays(labels, scores)
    thresholds = np.unique(s)[::-1]
    precision, recall = [], []
    for t in thresholds:
        predicted = s >= t
        tp = float((predicted & (y == 1)).sum())
        precision.append(tp / max(predicted.sum(), 1))
        recall.append(tp / max(y.sum(), 1))
    return np.array(precision), np.array(recall), thresholds


@dataclass(frozen=True)
class BinaryMetrics:
    auc: float
    accuracy: float
    f1: float
    sensitivity: float
    specificity: float
    precision: float
    threshold: float
    n_normal: int
    n_anomalous: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def metrics_at(labels: ArrayLike, scores: ArrayLike, threshold: float) -> BinaryMetrics:
    """All metrics when an image is called anomalous at ``score >= threshold``."""
    y, s = _arrays(labels, scores)
    predicted = s >= threshold
    tp = float((predicted & (y == 1)).sum())
    tn = float((~predicted & (y == 0)).sum())
    fp = float((predicted & (y == 0)).sum())
    fn = float((~predicted & (y == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    sensitivity = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * sensitivity / (precision + sensitivity) if precision + sensitivity else 0.0
    return BinaryMetrics(
        auc=roc_auc(y, s),
        accuracy=(tp + tn) / len(y),
        f1=f1,
        sensitivity=sensitivity,
        specificity=tn / (tn + fp) if tn + fp else 0.0,
        precision=precision,
        threshold=float(threshold),
        n_normal=int((y == 0).sum()),
        n_anomalous=int((y == 1).sum()),
    )
