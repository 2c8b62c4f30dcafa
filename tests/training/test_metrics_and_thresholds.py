"""Metrics against brute force, threshold rules and the calibration formula."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from model.calibration import Calibration
from training.metrics import metrics_at, roc_auc, roc_curve
from training.thresholds import choose, f1_optimal, normal_percentile


def brute_force_auc(labels, scores):
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 40)
    scores = rng.integers(0, 6, 40).astype(float)  # many ties
    assert roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores))


def test_roc_curve_spans_corners():
    fpr, tpr, _ = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)


def test_metrics_at_threshold():
    m = metrics_at([0, 0, 1, 1], [0.1, 0.6, 0.7, 0.2], 0.5)
    assert (m.sensitivity, m.specificity, m.accuracy, m.precision) == (0.5, 0.5, 0.5, 0.5)


def test_f1_optimal_separates_when_possible():
    t = f1_optimal([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.8, 0.9])
    assert t.rule == "f1_optimal" and 0.3 < t.value <= 0.8
    assert t.detail["validation_f1"] == 1.0


def test_normal_percentile_needs_only_normals():
    t = normal_percentile(np.linspace(0, 1, 101), 99.0)
    assert t.value == pytest.approx(0.99)
    assert choose("normal_percentile", [0] * 101, np.linspace(0, 1, 101)).value == pytest.approx(0.99)
    with pytest.raises(ValueError):
        choose("oracle", [0, 1], [0.1, 0.2])


def test_calibration_orients_low_logits_as_anomalous():
    cal = Calibration.fit([2.0, 3.0, 4.0])
    assert cal.apply(3.0) == pytest.approx(0.5)
    assert cal.apply(-5.0) > 0.99 and cal.apply(10.0) < 0.01
    with pytest.raises(ValueError):
        Calibration(0.0, 0.0)
