"""Seeds, ensembles and test-time augmentation, measured after training from saved checkpoints.

Usage: ``python -m training.seed_study runs/s0.ckpt runs/s1.epochs/e0014.ckpt ... [--tta]``.
Every checkpoint must be the same recipe on the same split (``--split-seed``) and have been trained
with ``--select-data``; each is scored on test-dev (its recorded selection set) and on the validation
split, then their mean logit (raw and z-scored on training normals), and with ``--tta`` each one's
mean logit over gamma-adjusted and shifted copies of the input. Prints a markdown table.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from training import checkpoint as ckpt
from training.metrics import roc_auc
from training.pipeline import evaluation_set, training_normals
from training.scoring import score_images

Images = NDArray[np.float32]
Augment = Callable[[Images], list[Images]]
AUGMENTATIONS: dict[str, Augment] = {
    "gamma 0.8 / 1 / 1.25": lambda x: [x, x**0.8, x**1.25],
    "input + four 4 px shifts": lambda x: [x] + [np.roll(x, s, axis=a) for s in (-4, 4) for a in (1, 2)],
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--tta", action="store_true", help="also score augmented copies of the input")
    parser.add_argument("--normals", type=int, default=300, help="training normals for the z-scores")
    args = parser.parse_args(argv)
    states = [ckpt.load(p) for p in args.checkpoints]
    first = states[0]
    selection = Path(first.data["selection"]["root"])
    sets = {
        "test-dev": evaluation_set(first, selection, "all", progress=False),
        "validation": evaluation_set(first, Path(first.data["root"]), "validation", progress=False),
    }
    normals = training_normals(first, progress=False)
    normals = normals[np.random.default_rng(0).permutation(len(normals))[: args.normals]]
    print("| model | test-dev AUC | validation AUC |\n|---|---|---|")

    def row(name: str, raw: dict[str, NDArray[np.float64]]) -> None:
        aucs = " | ".join(f"{roc_auc(sets[k][1], -raw[k]):.3f}" for k in sets)
        print(f"| {name} | {aucs} |")

    scored = []
    for path, state in zip(args.checkpoints, states, strict=True):
        generator, judge = state.build()
        with torch.inference_mode():
            raw = {k: score_images(generator, judge, images)[0] for k, (images, _) in sets.items()}
            reference = score_images(generator, judge, normals)[0]
        scored.append((raw, reference))
        row(f"{path} (epoch {state.epoch}, {state.score_norm})", raw)
        if args.tta:
            for name, augment in AUGMENTATIONS.items():
                with torch.inference_mode():
                    tta = {
                        k: np.mean([score_images(generator, judge, v)[0] for v in augment(images)], axis=0)
                        for k, (images, _) in sets.items()
                    }
                row(f"{path}, mean over {name}", tta)
    if len(scored) > 1:
        row("ensemble: mean logit", {k: np.mean([r[k] for r, _ in scored], axis=0) for k in sets})
        row(
            "ensemble: mean z-scored logit",
            {k: np.mean([(r[k] - ref.mean()) / ref.std() for r, ref in scored], axis=0) for k in sets},
        )


if __name__ == "__main__":
    main()
