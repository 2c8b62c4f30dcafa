"""The recipe ablation table: each training run's selected epoch on test-dev and on the validation
split, with bootstrap intervals, next to how stable the run was across epochs.

Usage: ``python -m training.ablation runs/a.ckpt runs/b.ckpt ... --out docs/ablation.md``; each run
must have been trained with ``--select-data`` (and, for the epoch statistics, ``--keep-epochs``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.config import preset
from training import checkpoint as ckpt
from training.metrics import AucInterval, auc_interval
from training.pipeline import evaluation_set
from training.scoring import score_images


@dataclass(frozen=True)
class RunSummary:
    name: str
    recipe: str
    epoch: int
    epochs: int
    score_norm: str
    selection: AucInterval
    validation: AucInterval
    selection_mean: float
    selection_spread: float

    def row(self) -> str:
        return (
            f"| {self.name} | {self.recipe} | {self.epoch}/{self.epochs} ({self.score_norm}) | "
            f"{self.selection} | {self.validation} | "
            f"{self.selection_mean:.3f} ± {self.selection_spread:.3f} |"
        )


HEADER = (
    "| run | recipe (changes to its preset) | selected epoch (D norm) | test-dev AUC [95% CI] | "
    "validation AUC [95% CI] | test-dev AUC over eligible epochs, mean ± sd |\n|---|---|---|---|---|---|"
)


def recipe_of(config: dict[str, Any]) -> str:
    """The config fields that differ from the named preset, as ``name=value``."""
    base = preset(config["name"]).to_dict()
    changed = {k: v for k, v in config.items() if base.get(k) != (tuple(v) if isinstance(v, list) else v)}
    changed = {k: v for k, v in changed.items() if not (isinstance(v, list) and tuple(v) == base.get(k))}
    return ", ".join(f"`{k}={json.dumps(v)}`" for k, v in sorted(changed.items())) or f"`{config['name']}`"


def summarise(path: Path, name: str | None = None) -> RunSummary:
    best = ckpt.load(path)
    last = ckpt.load(path.with_name(path.stem + ".last" + path.suffix))
    history = last.history
    selection_root = best.data.get("selection", {}).get("root")
    if not selection_root:
        raise ValueError(f"{path} was not trained with a selection set")
    generator, discriminator = best.build()
    aucs = {}
    for split, root, part in (
        ("selection", Path(selection_root), "all"),
        ("validation", Path(best.data["root"]), "validation"),
    ):
        images, labels = evaluation_set(best, root, part, progress=False)
        with torch.inference_mode():
            raw, _ = score_images(generator, discriminator, images)
        aucs[split] = auc_interval(labels, -raw)
    warmup = max(1, int(np.ceil(best.epochs * 0.1)) + 1)
    eligible = [h for h in history if h["epoch"] >= warmup]
    per_epoch = [max(h["sel_auc_instance"], h["sel_auc_eval"]) for h in eligible] or [np.nan]
    return RunSummary(
        name or path.stem,
        recipe_of(best.config),
        best.epoch,
        len(history),
        best.score_norm,
        aucs["selection"],
        aucs["validation"],
        float(np.mean(per_epoch)),
        float(np.std(per_epoch)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [HEADER] + [summarise(run).row() for run in args.runs]
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
