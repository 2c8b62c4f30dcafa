"""Evaluation reports: metrics.json, ROC and PR curves, score histograms and a reconstruction grid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from numpy.typing import NDArray

from training.metrics import metrics_at, pr_curve, roc_auc, roc_curve


def write_report(
    out_dir: Path,
    labels: NDArray[np.int64],
    scores: NDArray[np.float64],
    threshold: float,
    images: NDArray[np.float32],
    reconstructions: NDArray[np.float32],
    context: dict[str, Any],
) -> dict[str, Any]:
    """Write every artefact of an evaluation and return the metrics written to metrics.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {**metrics_at(labels, scores, threshold).to_dict(), **context}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _roc(out_dir / "roc.png", labels, scores)
    _pr(out_dir / "pr.png", labels, scores)
    _histogram(out_dir / "score_histogram.png", labels, scores, threshold)
    _grid(out_dir / "reconstructions.png", labels, scores, images, reconstructions)
    return metrics


def _roc(path: Path, labels: NDArray[np.int64], scores: NDArray[np.float64]) -> None:
    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, lw=2, label=f"AUC = {roc_auc(labels, scores):.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pr(path: Path, labels: NDArray[np.int64], scores: NDArray[np.float64]) -> None:
    precision, recall, _ = pr_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(recall, precision, lw=2)
    ax.axhline(labels.mean(), ls="--", c="grey", lw=1, label="prevalence")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _histogram(path: Path, labels: NDArray[np.int64], scores: NDArray[np.float64], threshold: float) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = [i / 40 for i in range(41)]
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label="normal")
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label="anomalous")
    ax.axvline(threshold, c="k", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.set(xlabel="calibrated anomaly score", ylabel="images", title="Scores by class")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _grid(
    path: Path,
    labels: NDArray[np.int64],
    scores: NDArray[np.float64],
    images: NDArray[np.float32],
    reconstructions: NDArray[np.float32],
    per_class: int = 4,
) -> None:
    """Inputs over reconstructions and |difference| for a few images of each class."""
    picks = [i for c in (0, 1) for i in np.flatnonzero(labels == c)[:per_class]]
    if not picks:
        return
    fig, axes = plt.subplots(3, len(picks), figsize=(1.8 * len(picks), 5.6), squeeze=False)
    for col, i in enumerate(picks):
        rows = (images[i], reconstructions[i], np.abs(images[i] - reconstructions[i]))
        for row, picture in enumerate(rows):
            axes[row, col].imshow(picture, cmap="gray" if row < 2 else "magma", vmin=0, vmax=1)
            axes[row, col].axis("off")
        axes[0, col].set_title(f"{'anomalous' if labels[i] else 'normal'}\n{scores[i]:.2f}", fontsize=8)
    for row, name in enumerate(("input", "reconstruction", "|difference|")):
        axes[row, 0].text(
            -0.1, 0.5, name, transform=axes[row, 0].transAxes, ha="right", va="center", fontsize=8
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
