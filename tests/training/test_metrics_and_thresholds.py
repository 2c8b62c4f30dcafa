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


def brute_force_best_f1(labels, scores):
    """The best F1 over every cut point, and the highest threshold reaching it."""
    best = (-1.0, -np.inf)
    for t in np.unique(scores):
        predicted = scores >= t
        tp = np.sum(predicted & (labels == 1))
        fp, fn = np.sum(predicted & (labels == 0)), np.sum(~predicted & (labels == 1))
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        best = max(best, (f1, float(t)))
    return best


@pytest.mark.parametrize("seed", range(8))
def test_f1_optimal_matches_brute_force_on_overlapping_tied_scores(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.normal(0.4 + 0.2 * labels, 0.2), 1)  # overlapping classes, many ties
    f1, value = brute_force_best_f1(labels, scores)
    chosen = f1_optimal(labels, scores)
    assert chosen.detail["validation_f1"] == pytest.approx(f1)
    assert chosen.value == value  # ties between cut points go to the higher threshold


@pytest.mark.parametrize("seed", range(8))
def test_specificity_threshold_is_the_most_sensitive_one_meeting_the_target(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 80)
    scores = np.round(rng.normal(0.4 + 0.2 * labels, 0.2), 2)
    chosen = choose("specificity", labels, scores, specificity=0.9)
    normals = scores[labels == 0]
    assert np.mean(normals < chosen.value) >= 0.9
    # Any lower candidate cut point would call more than 10% of the normals anomalous.
    lower = [t for t in np.unique(scores) if t < chosen.value]
    assert all(np.mean(normals < t) < 0.9 for t in lower)
    assert chosen.detail["specificity"] == pytest.approx(np.mean(normals < chosen.value))


def test_auc_interval_brackets_the_auc_and_narrows_with_more_images():
    from training.metrics import auc_interval

    rng = np.random.default_rng(0)
    small_labels = np.r_[np.zeros(30), np.ones(30)]
    large_labels = np.r_[np.zeros(600), np.ones(600)]
    small = auc_interval(small_labels, rng.normal(small_labels, 1.0))
    large = auc_interval(large_labels, rng.normal(large_labels, 1.0))
    for interval in (small, large):
        assert interval.low < interval.auc < interval.high
    assert large.high - large.low < (small.high - small.low) / 2
    assert 0.70 < large.auc < 0.81  # a unit shift at unit noise: AUC = Phi(1/sqrt 2) = 0.76
    assert auc_interval(small_labels, rng.normal(small_labels, 1.0), seed=1) != small
