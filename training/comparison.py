"""SQUID next to its baselines on every evaluated split: AUC with bootstrap intervals, a table, plots."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from numpy.typing import NDArray

from training.metrics import AucInterval, auc_interval, roc_curve


@dataclass(frozen=True)
class Scored:
    """One method's scores on one labelled split (higher = more anomalous)."""

    method: str
    split: str
    labels: NDArray[np.int64]
    scores: NDArray[np.float64]

    def interval(self) -> AucInterval:
        return auc_interval(self.labels, self.scores)


def comparison_table(results: list[Scored]) -> dict[str, dict[str, dict[str, float]]]:
    """method -> split -> AUC interval."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for result in results:
        table.setdefault(result.method, {})[result.split] = result.interval().to_dict()
    return table


def to_markdown(table: dict[str, dict[str, dict[str, float]]], sizes: dict[str, str]) -> str:
    """A Markdown table: one row per method, one column per split, 'AUC [95% CI]' cells."""
    splits = list(sizes)
    header = "| method | " + " | ".join(f"{s} ({sizes[s]})" for s in splits) + " |"
    lines = [header, "|---|" + "---|" * len(splits)]
    for method, row in table.items():
        cells = [
            f"{row[s]['auc']:.3f} [{row[s]['low']:.3f}, {row[s]['high']:.3f}]" if s in row else "–"
            for s in splits
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_comparison(out_dir: Path, results: list[Scored]) -> dict[str, Any]:
    """comparison.json, comparison.md and roc_comparison.png (one panel per split)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = comparison_table(results)
    sizes = {r.split: f"{int((r.labels == 0).sum())} N / {int((r.labels == 1).sum())} A" for r in results}
    (out_dir / "comparison.json").write_text(json.dumps({"auc": table, "sizes": sizes}, indent=2) + "\n")
    (out_dir / "comparison.md").write_text(to_markdown(table, sizes))
    _roc_panels(out_dir / "roc_comparison.png", results, list(sizes))
    return {"auc": table, "sizes": sizes}


def _roc_panels(path: Path, results: list[Scored], splits: list[str]) -> None:
    fig, axes = plt.subplots(1, len(splits), figsize=(4.6 * len(splits), 4.6), squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        for result in (r for r in results if r.split == split):
            fpr, tpr, _ = roc_curve(result.labels, result.scores)
            ax.plot(fpr, tpr, lw=1.8, label=f"{result.method}: {result.interval().auc:.3f}")
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC, {split}")
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_training_curves(path: Path, history: list[dict[str, Any]], chosen_epoch: int) -> None:
    """AUC per epoch on each measured split and normalisation, the selected epoch marked."""
    keys = sorted({k for h in history for k in h if "_auc_" in k})
    if not keys:
        return
    names = {"val": "validation", "sel": "selection"}
    fig, ax = plt.subplots(figsize=(7, 3.8))
    epochs = [h["epoch"] for h in history]
    for key in keys:
        split, norm = key.split("_auc_")
        values = [h.get(key, np.nan) for h in history]
        ax.plot(epochs, values, lw=1.5, label=f"{names.get(split, split)}, {norm}")
    ax.axvline(chosen_epoch, c="k", ls="--", lw=1, label=f"selected epoch {chosen_epoch}")
    ax.set(xlabel="epoch", ylabel="AUC", title="AUC per epoch", ylim=(0.4, 1.0))
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
