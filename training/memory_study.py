"""Can a space-aware memory of normal features see what the discriminator misses? A measured study.

Usage: ``python -m training.memory_study runs/ens.ckpt [--data ../shared/data/zhanglab-224/test-dev]``.

For each feature map a trained SQUID computes (the encoder's per-patch stages 2 and 3, stage 3 paired
with its mirror image's, and the discriminator's first stage), every position gets a memory of the
training normals' features at that position: their mean and covariance (a Gaussian per position,
fitted on 1,000 training normals). A film's feature at a position is scored by its Mahalanobis
distance to that position's memory, standardised by the same distance on the held-out training
normals; the film's score is the largest standardised distance over positions. The discriminator's
logit and the fusion of the two (the larger of the two scores, each standardised on held-out
training normals) are measured beside them, on the structural-anomaly benchmark and on the labelled
anomalies of each split. Prints a markdown table; the figures in docs/experiments.md come from it.
Nothing here is trained on the evaluation films or on altered films.
"""

from __future__ import annotations

import argparse
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from model.network import SquidGenerator
from model.network.ensemble import Judge, discriminators_of
from model.network.patches import merge_patches, split_patches
from training import checkpoint as ckpt
from training.films import Films
from training.metrics import roc_auc
from training.pipeline import evaluation_films, preprocessing_of, training_films
from training.structural_benchmark import score_set, structural_aucs, structural_set
from training.synthetic_anomalies import FAMILIES, KINDS

FIT_NORMALS = 1000
SHRINKAGE = 0.1
BATCH = 64
Maps = dict[str, torch.Tensor]


@torch.no_grad()
def feature_maps(generator: SquidGenerator, judge: Judge, images: NDArray[np.float32]) -> Maps:
    """The feature maps the study models, each (N, C, H, W) over the whole film, plus the raw logit."""
    parts: dict[str, list[torch.Tensor]] = {"L2": [], "L3": [], "D1": [], "raw": []}
    first = discriminators_of(judge)[0].features
    grid = generator.config.grid
    for start in range(0, len(images), BATCH):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + BATCH]))[:, None]
        stages = generator.encoder(split_patches(batch, grid))
        parts["L2"].append(merge_patches(stages[1], grid))
        parts["L3"].append(merge_patches(stages[2], grid))
        parts["D1"].append(F.avg_pool2d(first[1](first[0](batch)), 2))
        parts["raw"].append(judge(batch)[:, None, None, None])
    maps = {name: torch.cat(values).double() for name, values in parts.items()}
    maps["L3+mirror"] = torch.cat([maps["L3"], maps["L3"].flip(-1)], dim=1)
    return maps


class PositionMemory:
    """A Gaussian of the normals' features at every position: mean and shrunk inverse covariance."""

    def __init__(self, features: torch.Tensor) -> None:
        n, c, h, w = features.shape
        x = features.permute(2, 3, 0, 1).reshape(h * w, n, c)
        self.mean = x.mean(1, keepdim=True)
        centred = x - self.mean
        covariance = centred.transpose(1, 2) @ centred / (n - 1)
        scale = covariance.diagonal(dim1=1, dim2=2).mean(1)
        covariance += (SHRINKAGE * scale + 1e-6)[:, None, None] * torch.eye(c, dtype=x.dtype)
        self.precision = torch.linalg.inv(covariance)
        self.shape = (h, w)

    def distance(self, features: torch.Tensor) -> NDArray[np.float64]:
        """(N, C, H, W) -> (N, H, W) Mahalanobis distances."""
        n, c, h, w = features.shape
        x = features.permute(2, 3, 0, 1).reshape(h * w, n, c) - self.mean
        squared = ((x @ self.precision) * x).sum(-1).clamp_min(0)
        return squared.sqrt().permute(1, 0).reshape(n, h, w).numpy()


def study_scorers(checkpoint: ckpt.Checkpoint, normals: Films) -> dict[str, Callable[[Films], NDArray]]:
    """One film scorer per method: the discriminator, each memory, and D fused with each memory."""
    generator, judge = checkpoint.build()
    prep = preprocessing_of(checkpoint.squid_config())
    orientation = checkpoint.get_calibration().orientation
    images = normals.at(prep.size, prep.intensity)
    order = np.random.default_rng(0).permutation(len(images))
    fit, held = order[:FIT_NORMALS], order[FIT_NORMALS:]
    reference = feature_maps(generator, judge, images)
    names = ("L2", "L3", "L3+mirror", "D1")
    memories = {name: PositionMemory(reference[name][fit]) for name in names}
    position_stats = {}
    for name in names:
        held_distance = memories[name].distance(reference[name][held])
        spread = held_distance.std(0) + 0.1 * held_distance.std()
        position_stats[name] = (held_distance.mean(0), spread)

    def raw_scores(maps: Maps) -> dict[str, NDArray[np.float64]]:
        out = {"D": orientation * maps["raw"].flatten().numpy()}
        for name in names:
            mean, spread = position_stats[name]
            z = (memories[name].distance(maps[name]) - mean) / spread
            out[name] = z.reshape(len(z), -1).max(1)
        return out

    held_raw = raw_scores({k: v[held] for k, v in reference.items()})
    standard = {k: (v.mean(), v.std()) for k, v in held_raw.items()}
    cache: weakref.WeakKeyDictionary[Films, dict[str, NDArray[np.float64]]] = weakref.WeakKeyDictionary()

    def standardised(films: Films) -> dict[str, NDArray[np.float64]]:
        if films not in cache:
            maps = feature_maps(generator, judge, films.at(prep.size, prep.intensity))
            cache[films] = {k: (v - standard[k][0]) / standard[k][1] for k, v in raw_scores(maps).items()}
        return cache[films]

    def method(*parts: str) -> Callable[[Films], NDArray[np.float64]]:
        return lambda films: np.max([standardised(films)[part] for part in parts], axis=0)

    scorers = {"discriminator (shipped score)": method("D")}
    for name in names:
        scorers[f"memory {name}"] = method(name)
        scorers[f"max(D, memory {name})"] = method("D", name)
    return scorers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument(
        "--data", type=Path, action="append", default=[], help="labelled folders (repeatable)"
    )
    args = parser.parse_args(argv)
    state = ckpt.load(args.checkpoint)
    splits = {"validation": evaluation_films(state, Path(state.data["root"]), "validation", progress=False)}
    for root in args.data:
        splits[root.name] = evaluation_films(state, root, "all", progress=False)
    scorers = study_scorers(state, training_films(state, progress=False))
    columns = ["labelled", *FAMILIES, "mean", *(k for k in KINDS if k not in FAMILIES)]
    print("| method | split | " + " | ".join(columns) + " |\n|---|---|" + "---|" * len(columns))
    for split, (films, labels) in splits.items():
        normals = Films([f for f, label in zip(films.films, labels, strict=True) if label == 0])
        anomalous = Films([f for f, label in zip(films.films, labels, strict=True) if label == 1])
        altered = structural_set(split, normals)
        for method, scorer in scorers.items():
            table = structural_aucs(score_set(scorer, altered))
            negatives, positives = scorer(normals), scorer(anomalous)
            table["labelled"] = {
                "auc": roc_auc(
                    np.r_[np.zeros(len(negatives)), np.ones(len(positives))], np.r_[negatives, positives]
                )
            }
            table["mean"] = table.pop("mean of families")
            print(f"| {method} | {split} | " + " | ".join(f"{table[c]['auc']:.3f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
