"""Binary classification metrics (label 1 = anomalous, higher score = more anomalous).

ROC, PR and AUC come from scikit-learn; AUC intervals from a stratified bootstrap (scipy), so that a
difference between two models can be read against the noise of a few hundred test images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import bootstrap, mannwhitneyu
from sklearn import metrics as skm

BOOTSTRAP_RESAMPLES = 1000


def _arrays(labels: ArrayLike, scores: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    y = np.asarray(labels).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError("labels and scores must be 1-D arrays of equal length")
    return y, s


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve (ties count one half); NaN when a class is missing."""
    y, s = _arrays(labels, scores)
    if y.min(initial=0) == y.max(initial=0):
        return float("nan")
    return float(skm.roc_auc_score(y, s))


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[NDArray[np.float64], ...]:
    """False positive rates, true positive rates and the thresholds (predict 1 when score >= t)."""
    y, s = _arrays(labels, scores)
    fpr, tpr, thresholds = skm.roc_curve(y, s, drop_intermediate=False)
    return fpr, tpr, thresholds


def pr_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[NDArray[np.float64], ...]:
    """Precision and recall at every distinct score threshold, lowest threshold first."""
    y, s = _arrays(labels, scores)
    precision, recall, thresholds = skm.precision_recall_curve(y, s)
    return precision[:-1], recall[:-1], thresholds


@dataclass(frozen=True)
class AucInterval:
    """An AUC with its stratified-bootstrap percentile interval."""

    auc: float
    low: float
    high: float
    level: float = 0.95

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.auc:.3f} [{self.low:.3f}, {self.high:.3f}]"


def auc_interval(labels: ArrayLike, scores: ArrayLike, level: float = 0.95, seed: int = 0) -> AucInterval:
    """AUC with a bootstrap interval that resamples normals and anomalous images separately,
    so every resample keeps both classes at their observed sizes."""
    y, s = _arrays(labels, scores)
    auc = roc_auc(y, s)
    if np.isnan(auc):
        return AucInterval(auc, auc, auc, level)
    anomalous, normal = s[y == 1], s[y == 0]

    def statistic(pos: NDArray[np.float64], neg: NDArray[np.float64], axis: int = -1) -> NDArray[np.float64]:
        # AUC is the Mann-Whitney U of the anomalous scores over the normals, normalised.
        u = mannwhitneyu(pos, neg, axis=axis, method="asymptotic").statistic
        return np.asarray(u, dtype=np.float64) / (pos.shape[axis] * neg.shape[axis])

    result = bootstrap(
        (anomalous, normal),
        statistic,
        n_resamples=BOOTSTRAP_RESAMPLES,
        confidence_level=level,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    interval = result.confidence_interval
    return AucInterval(auc, float(interval.low), float(interval.high), level)


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
    predicted = (s >= threshold).astype(np.int64)
    tn, fp, fn, tp = (float(v) for v in skm.confusion_matrix(y, predicted, labels=[0, 1]).ravel())
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
