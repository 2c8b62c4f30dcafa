"""The documents a training run ships: the model card (from a tiny trained artifact) and the
evaluation report, checked for their figures rather than for their existence."""

from __future__ import annotations

import json
import re
import sys
from itertools import product
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")

from model.runtime import SquidRuntime
from training import model_card
from training.metrics import roc_auc
from training.report import write_report

LABELS = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1], dtype=np.int64)
SCORES = np.array([0.10, 0.30, 0.55, 0.60, 0.20, 0.55, 0.90, 0.40, 0.70])


def card_table(card: str) -> dict[str, str]:
    return dict(re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|$", card, flags=re.MULTILINE))


@pytest.mark.slow  # trains and exports a tiny model
def test_model_card_figures_are_the_artifacts_and_agree_with_its_own_scores(
    tiny_artifact: Path, real_images: dict[str, np.ndarray]
) -> None:
    card = model_card.render(tiny_artifact, {"machine": "the test machine"})
    runtime = SquidRuntime(tiny_artifact, intra_op_threads=1)
    meta, val = runtime.metadata, runtime.metadata.validation
    table = card_table(card)

    assert f"# Model card: {meta.model_name} {meta.model_version}" in card
    assert meta.weights_sha256[:16] in card and "the test machine" in card
    assert f"Threshold {runtime.threshold:.4f}, rule `{meta.threshold_rule}`" in card
    assert f"mu = {runtime.calibration.mu:.4f}" in card and f"sigma = {runtime.calibration.sigma:.4f}" in card
    assert table["normal / pneumonia images"] == "6 / 6"
    for name, key in [("AUC (ROC)", "auc"), ("accuracy", "accuracy"), ("F1", "f1")]:
        assert table[name] == f"{val[key]:.3f}", name

    # The card's AUC is what the artifact itself gives on the validation images (a rank statistic,
    # so the export's ~1e-6 parity error cannot move it unless two scores tie).
    scores = [r.score for r in runtime.score(real_images["val"])]
    assert float(table["AUC (ROC)"]) == pytest.approx(roc_auc([0] * 6 + [1] * 6, scores), abs=5e-4)
    # Sensitivity and specificity are counts out of 6, and accuracy is their weighted mean.
    sensitivity, specificity = float(table["sensitivity"]), float(table["specificity"])
    assert sensitivity * 6 == pytest.approx(round(sensitivity * 6), abs=3e-3)
    assert specificity * 6 == pytest.approx(round(specificity * 6), abs=3e-3)
    assert float(table["accuracy"]) == pytest.approx((sensitivity + specificity) / 2, abs=1e-3)


@pytest.mark.slow  # trains and exports a tiny model
def test_model_card_command_writes_the_rendered_card(tiny_artifact: Path, tmp_path: Path) -> None:
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"test_note": "Test split: not measured here."}))
    out = tmp_path / "MODEL_CARD.md"
    argv, sys.argv = sys.argv, ["model_card", str(tiny_artifact), "--out", str(out), "--extra", str(extra)]
    try:
        model_card.main()
    finally:
        sys.argv = argv
    assert out.read_text() == model_card.render(tiny_artifact, json.loads(extra.read_text()))
    assert "Test split: not measured here." in out.read_text()


def brute_force_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(anomalous scores above normal), ties counting one half: the definition, pair by pair."""
    pairs = list(product(scores[labels == 1], scores[labels == 0]))
    return sum(1.0 if a > n else 0.5 if a == n else 0.0 for a, n in pairs) / len(pairs)


def test_report_metrics_are_the_confusion_matrix_at_the_threshold(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.random((len(LABELS), 32, 32)).astype(np.float32)
    metrics = write_report(tmp_path, LABELS, SCORES, 0.55, images, images[::-1], {"split": "unit"})

    # At score >= 0.55: anomalous 0.55, 0.90, 0.70 caught (0.40 missed); normals 0.55, 0.60 flagged.
    tp, fn, fp, tn = 3, 1, 2, 3
    expected = {
        "accuracy": (tp + tn) / 9,
        "sensitivity": tp / (tp + fn),
        "specificity": tn / (tn + fp),
        "precision": tp / (tp + fp),
        "f1": 2 * tp / (2 * tp + fp + fn),
        "auc": brute_force_auc(LABELS, SCORES),
    }
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written == metrics
    for key, value in expected.items():
        assert written[key] == pytest.approx(value), key
    assert (written["n_normal"], written["n_anomalous"], written["split"]) == (5, 4, "unit")
    assert written["threshold"] == 0.55
    for name in ("roc.png", "pr.png", "score_histogram.png", "reconstructions.png"):
        with Image.open(tmp_path / name) as picture:
            assert picture.format == "PNG" and min(picture.size) >= 200, name
            assert len(np.unique(np.asarray(picture.convert("L")))) > 10, f"{name} is blank"
