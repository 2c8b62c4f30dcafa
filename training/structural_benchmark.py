"""The structural-anomaly benchmark: does a detector rank altered copies of normal films above the
films themselves?

Every normal film of a split is altered once per kind (:mod:`training.synthetic_anomalies`), and each
method's scores on the altered copies are compared with its scores on the same films unaltered: one
AUC per kind, one per family (its kinds pooled) and the mean over families, each with a stratified
bootstrap interval. The pneumonia AUC of the same split sits beside them, so a method that only
measures lung brightness shows as one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from training.films import Films
from training.metrics import auc_interval
from training.synthetic_anomalies import FAMILIES, KINDS, Alteration, make_altered_set

Scores = NDArray[np.float64]
FilmScorer = Callable[[Films], Scores]
MEAN = "mean of families"
# A split gives the benchmark its normals only when it has this many (bootstrap intervals of a
# dozen films say little).
MIN_NORMALS = 20
LABELLED = "labelled anomalous"


@dataclass(frozen=True)
class StructuralSet:
    """The normal films of one split and their altered copies, kind by kind."""

    split: str
    normals: Films
    altered: dict[str, Films]
    alterations: dict[str, list[Alteration]]


def structural_set(split: str, normals: Films, seed: int = 0) -> StructuralSet:
    made = make_altered_set(normals.films, seed)
    return StructuralSet(
        split, normals, {kind: Films(films) for kind, films in made.altered.items()}, made.alterations
    )


def score_set(scorer: FilmScorer, data: StructuralSet) -> dict[str, Scores]:
    """``{"normal": scores of the films, kind: scores of its altered copies, ...}``."""
    out = {"normal": np.asarray(scorer(data.normals), dtype=np.float64)}
    for kind, films in data.altered.items():
        out[kind] = np.asarray(scorer(films), dtype=np.float64)
    return out


def structural_aucs(scores: Mapping[str, Scores]) -> dict[str, dict[str, float]]:
    """AUC intervals per kind, per family (kinds pooled) and their mean over families."""
    normal = scores["normal"]

    def interval(positives: Scores) -> dict[str, float]:
        labels = np.r_[np.zeros(len(normal)), np.ones(len(positives))]
        return auc_interval(labels, np.r_[normal, positives]).to_dict()

    table = {kind: interval(scores[kind]) for kind in KINDS if kind in scores}
    families = {}
    for family, kinds in FAMILIES.items():
        present = [scores[k] for k in kinds if k in scores]
        if present:
            families[family] = interval(np.concatenate(present))
    table.update(families)
    if families:
        table[MEAN] = {"auc": float(np.mean([f["auc"] for f in families.values()]))}
    return table


def to_markdown(results: dict[str, dict[str, dict[str, Any]]], columns: list[str]) -> str:
    """One row per (method, split); cells 'AUC [low, high]'."""
    lines = [
        "| method | split | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for method, splits in results.items():
        for split, row in splits.items():
            cells = []
            for column in columns:
                cell = row.get(column)
                if cell is None:
                    cells.append("–")
                elif "low" in cell:
                    cells.append(f"{cell['auc']:.3f} [{cell['low']:.2f}, {cell['high']:.2f}]")
                else:
                    cells.append(f"{cell['auc']:.3f}")
            lines.append(f"| {method} | {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_structural(
    out_dir: Path,
    results: dict[str, dict[str, dict[str, Any]]],
    labelled: dict[str, dict[str, dict[str, float]]] | None = None,
) -> dict[str, Any]:
    """structural.json and structural.md; ``labelled[method][split]`` (the split's own labelled
    anomalies, pneumonia on ZhangLab) adds that AUC as the first column."""
    merged: dict[str, dict[str, dict[str, Any]]] = {}
    for method, splits in results.items():
        for split, row in splits.items():
            known = (labelled or {}).get(method, {})
            extra = {LABELLED: known[split]} if split in known else {}
            merged.setdefault(method, {})[split] = {**extra, **row}
    columns = [LABELLED, *FAMILIES, MEAN, *(k for k in KINDS if k not in FAMILIES)]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "structural.json").write_text(json.dumps(merged, indent=2) + "\n")
    (out_dir / "structural.md").write_text(to_markdown(merged, columns))
    return merged
