"""The structural-anomaly benchmark for an exported artifact, and pictures of what its map shows.

Usage: ``python -m training.structural_report model/artifacts/squid-default.onnx --data
../shared/data/zhanglab-224/test-dev --out reports/structural [--examples docs/img/structural-examples.png]``

``squid evaluate`` runs the benchmark on a checkpoint; this runs it on what serving runs (the ONNX
artifact through :class:`model.runtime.SquidRuntime`), for models whose checkpoints are gone. The
validation split and the baselines' training normals come from the data the artifact records.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from numpy.typing import NDArray

from model.heatmap import overlay_rgb
from model.preprocess import Preprocessing
from model.runtime import SquidRuntime
from training import data as folders
from training.baselines import fit_baselines
from training.comparison import Scored, comparison_table
from training.films import Films, load_films
from training.structural_benchmark import benchmark, structural_set, write_structural
from training.synthetic_anomalies import KINDS

BATCH = 32
Split = tuple[Films, NDArray[np.int64]]


def artifact_scorer(runtime: SquidRuntime) -> Callable[[Films], NDArray[np.float64]]:
    """The artifact's calibrated score of films, preprocessed as its metadata says."""
    prep = Preprocessing.from_spec(runtime.metadata.preprocessing, runtime.metadata.input_size)

    def score(films: Films) -> NDArray[np.float64]:
        images = films.at(prep.size, prep.intensity)
        scores = []
        for start in range(0, len(images), BATCH):
            scores += [r.score for r in runtime.score(images[start : start + BATCH], with_map=False)]
        return np.array(scores, dtype=np.float64)

    return score


def recorded_data(runtime: SquidRuntime, progress: bool = True) -> tuple[Films, Split]:
    """The artifact's training normals and its validation split, from the data its metadata names."""
    data = runtime.metadata.training.get("data", {})
    root = Path(data.get("root", ""))
    if not root.is_dir():
        raise FileNotFoundError(f"the artifact's training data {root} is not here")
    spec = data.get("split", {})
    parts = folders.split_records(
        folders.scan_dataset(root),
        spec.get("val_normal", 100),
        spec.get("val_anomalous", 100),
        spec.get("seed", 0),
    )
    train = load_films([r.path for r in parts.train], progress, "loading train")
    validation = load_films([r.path for r in parts.validation], progress, "loading validation")
    return train, (validation, folders.labels_of(parts.validation))


def labelled_aucs(
    scorers: dict[str, Callable[[Films], NDArray[np.float64]]], splits: dict[str, Split]
) -> Any:
    """Each method's AUC interval on each split's own labelled anomalies (pneumonia on ZhangLab)."""
    return comparison_table(
        [
            Scored(method, name, labels, score(films))
            for name, (films, labels) in splits.items()
            for method, score in scorers.items()
        ]
    )


def draw_examples(runtime: SquidRuntime, film: NDArray[np.float32], out: Path, seed: int = 0) -> None:
    """One normal film and one altered copy of each kind, each with the artifact's map and score."""
    prep = Preprocessing.from_spec(runtime.metadata.preprocessing, runtime.metadata.input_size)
    altered = structural_set("example", Films([film]), seed).altered
    films = [("normal", film)] + [(kind, altered[kind].films[0]) for kind in KINDS]
    results = runtime.score(np.stack([prep(f) for _, f in films]), with_map=True)
    fig, axes = plt.subplots(2, len(films), figsize=(2.1 * len(films), 4.6))
    for column, ((name, image), result) in enumerate(zip(films, results, strict=True)):
        axes[0, column].imshow(image, cmap="gray")
        axes[0, column].set_title(name, fontsize=9)
        axes[1, column].imshow(overlay_rgb(image, result.map_or_raise(), vmax=result.map_scale))
        axes[1, column].set_title(f"score {result.score:.3f}", fontsize=8)
        for row in (0, 1):
            axes[row, column].axis("off")
    fig.suptitle(
        f"{runtime.metadata.model_name} {runtime.metadata.model_version}: altered films and maps", fontsize=9
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--data", type=Path, action="append", default=[], help="labelled folder (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="folder for structural.json / .md")
    parser.add_argument("--examples", type=Path, help="PNG of altered films with the artifact's maps")
    args = parser.parse_args(argv)
    runtime = SquidRuntime(args.artifact)
    train, validation = recorded_data(runtime)
    splits: dict[str, Split] = {"validation": validation}
    for root in args.data:
        records = folders.scan_dataset(root)
        splits[root.name] = (
            load_films([r.path for r in records], desc=f"loading {root.name}"),
            folders.labels_of(records),
        )
    name = f"{runtime.metadata.model_name} {runtime.metadata.model_version}"
    scorers = {name: artifact_scorer(runtime), **fit_baselines(train)}
    write_structural(args.out, benchmark(scorers, splits), labelled_aucs(scorers, splits))
    print((args.out / "structural.md").read_text())
    if args.examples:
        films, labels = splits[args.data[0].name] if args.data else validation
        draw_examples(runtime, films.films[int(np.flatnonzero(labels == 0)[0])], args.examples)


if __name__ == "__main__":
    main()
