"""From a data folder to a trained, calibrated checkpoint and to an evaluation report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from model.config import SquidConfig
from model.preprocess import Preprocessing
from training import checkpoint as ckpt
from training import data as folders
from training import digit_anatomy
from training.baseline import load_autoencoder, reconstruction_errors
from training.baselines import fit_baselines
from training.comparison import Scored, write_comparison, write_training_curves
from training.films import Films, load_films
from training.report import write_report
from training.scoring import score_images
from training.structural_benchmark import (
    MIN_NORMALS,
    score_set,
    structural_aucs,
    structural_set,
    write_structural,
)
from training.trainer import LabelledSet, TrainData, Trainer, TrainOptions, last_path

DIGIT_TRAIN_IMAGES = 1600


@dataclass(frozen=True)
class SplitSpec:
    val_normal: int = 100
    val_anomalous: int = 100
    seed: int = 0


def is_digit_folder(path: Path) -> bool:
    """A folder of per-digit MNIST arrays (``0.npy`` .. ``9.npy``) means DigitAnatomy."""
    return all((Path(path) / f"{d}.npy").is_file() for d in range(10))


def prepare_data(
    root: Path,
    prep: Preprocessing,
    split: SplitSpec,
    progress: bool = True,
    selection: Path | None = None,
) -> TrainData:
    """Training normals, the validation split and the optional selection set, preprocessed exactly
    as serving will."""
    data = _prepare_training_data(root, prep, split, progress)
    if selection is not None:
        records = folders.scan_dataset(selection)
        if len({r.label for r in records}) < 2:
            raise ValueError(f"the selection set {selection} needs both normal and anomalous images")
        images = folders.load_images(records, prep, progress, "loading selection")
        data.selection = LabelledSet(images, folders.labels_of(records))
        data.source["selection"] = {
            "root": str(Path(selection).resolve()),
            "digest": folders.data_digest(records, folders.dataset_root(selection)),
            "n": len(records),
        }
    return data


def _prepare_training_data(root: Path, prep: Preprocessing, split: SplitSpec, progress: bool) -> TrainData:
    root = Path(root).resolve()
    if is_digit_folder(root):
        digits = digit_anatomy.load_mnist(root)
        train_pool, eval_pool = digit_anatomy.split_pools(digits, 0.8)
        train, _ = digit_anatomy.make_set(train_pool, DIGIT_TRAIN_IMAGES, 0, split.seed)
        val_images, val_labels = digit_anatomy.make_set(
            eval_pool, split.val_normal, split.val_anomalous, split.seed + 1
        )
        source = {
            "kind": "digit_anatomy",
            "root": str(root),
            "n_train": len(train),
            "split": vars(split),
        }
        return TrainData(_resize(train, prep), _resize(val_images, prep), val_labels, source)
    records = folders.scan_dataset(root)
    parts = folders.split_records(records, split.val_normal, split.val_anomalous, split.seed)
    train = folders.load_images(parts.train, prep, progress, "loading train")
    val = folders.load_images(parts.validation, prep, progress, "loading validation")
    source = {
        "kind": "image_folder",
        "root": str(root),
        "digest": folders.data_digest(parts.train, folders.dataset_root(root)),
        "validation_digest": folders.data_digest(parts.validation, folders.dataset_root(root)),
        "n_train": len(parts.train),
        "n_validation": len(parts.validation),
        "split": vars(split),
    }
    return TrainData(train, val, folders.labels_of(parts.validation), source)


def _resize(images: NDArray[np.float32], prep: Preprocessing) -> NDArray[np.float32]:
    if images.shape[1:] == (prep.size, prep.size) and prep.intensity == "minmax":
        return images
    return np.stack([prep(image) for image in images])


def preprocessing_of(config: SquidConfig) -> Preprocessing:
    return Preprocessing(config.image_size, config.intensity)


def train(
    config: SquidConfig,
    data_root: Path,
    out: Path,
    options: TrainOptions,
    split: SplitSpec,
    resume: bool = False,
    selection: Path | None = None,
) -> ckpt.Checkpoint:
    data = prepare_data(data_root, preprocessing_of(config), split, options.progress, selection)
    trainer = Trainer(config, data, out, options)
    if resume:
        state = last_path(Path(out))
        if not state.is_file():
            raise FileNotFoundError(f"nothing to resume: {state} does not exist")
        trainer.resume(ckpt.load(state))
    return trainer.fit()


def evaluation_films(
    checkpoint: ckpt.Checkpoint, root: Path, split: str, progress: bool = True
) -> tuple[Films, NDArray[np.int64]]:
    """The films to evaluate, display-ready: a whole labelled folder, or the checkpoint's own
    validation split."""
    root = Path(root).resolve()
    saved = checkpoint.data.get("split", {})
    spec = SplitSpec(**saved) if saved else SplitSpec()
    if is_digit_folder(root):
        digits = digit_anatomy.load_mnist(root)
        _, eval_pool = digit_anatomy.split_pools(digits, 0.8)
        seed = spec.seed + 1 if split == "validation" else spec.seed + 1000
        images, labels = digit_anatomy.make_set(eval_pool, spec.val_normal, spec.val_anomalous, seed)
        return Films(list(images)), labels
    records = folders.scan_dataset(root)
    if split == "validation":
        records = folders.split_records(records, spec.val_normal, spec.val_anomalous, spec.seed).validation
    elif split != "all":
        raise ValueError("split must be 'all' or 'validation'")
    return load_films([r.path for r in records], progress), folders.labels_of(records)


def evaluation_set(
    checkpoint: ckpt.Checkpoint, root: Path, split: str, progress: bool = True
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The images to evaluate, preprocessed as the checkpoint's model reads them."""
    films, labels = evaluation_films(checkpoint, root, split, progress)
    prep = preprocessing_of(checkpoint.squid_config())
    return films.at(prep.size, prep.intensity), labels


def training_films(checkpoint: ckpt.Checkpoint, progress: bool = True) -> Films:
    """The normal films the checkpoint was trained on (its recorded root and split), display-ready."""
    root = Path(checkpoint.data.get("root", ""))
    if not root.exists():
        raise FileNotFoundError(
            f"the training data {root} is gone: the baselines and the anomaly map's reference need it"
        )
    spec = SplitSpec(**checkpoint.data.get("split", {}))
    if is_digit_folder(root):
        digits = digit_anatomy.load_mnist(root)
        train_pool, _ = digit_anatomy.split_pools(digits, 0.8)
        images, _ = digit_anatomy.make_set(train_pool, DIGIT_TRAIN_IMAGES, 0, spec.seed)
        return Films(list(images))
    parts = folders.split_records(folders.scan_dataset(root), spec.val_normal, spec.val_anomalous, spec.seed)
    return load_films([r.path for r in parts.train], progress, "loading train")


def training_normals(checkpoint: ckpt.Checkpoint, progress: bool = True) -> NDArray[np.float32]:
    """The normals the checkpoint was trained on, preprocessed exactly as serving does (for the
    export's anomaly-map reference)."""
    root = Path(checkpoint.data.get("root", ""))
    if not root.exists():
        raise FileNotFoundError(
            f"the training data {root} is gone: the baselines and the anomaly map's reference need it"
        )
    spec = SplitSpec(**checkpoint.data.get("split", {}))
    return prepare_data(root, preprocessing_of(checkpoint.squid_config()), spec, progress).train


def evaluate(
    checkpoint_path: Path,
    out_dir: Path,
    data_roots: Sequence[Path] = (),
    validation: bool = True,
    autoencoder: Path | None = None,
    progress: bool = True,
    anomalies: bool = True,
) -> dict[str, Any]:
    """SQUID's report on each split (the checkpoint's own validation split, then every folder in
    ``data_roots`` whole), and SQUID next to the baselines on all of them with AUC intervals.

    With ``anomalies``, every chest-film split with enough normals is also the source of the
    structural-anomaly benchmark (:mod:`training.structural_benchmark`): its normals altered kind by
    kind, scored by SQUID and the baselines, in structural.json / structural.md.
    """
    checkpoint = ckpt.load(checkpoint_path)
    if checkpoint.threshold is None:
        raise ValueError(f"{checkpoint_path} has no threshold: evaluate the best checkpoint, not .last")
    splits: list[tuple[str, Path, str]] = []
    if validation:
        splits.append(("validation", Path(checkpoint.data.get("root", "")), "validation"))
    splits += [(_split_name(root, [s[0] for s in splits]), Path(root), "all") for root in data_roots]
    if not splits:
        raise ValueError("nothing to evaluate: give --data or keep the validation split")
    generator, discriminator = checkpoint.build()
    calibration = checkpoint.get_calibration()
    prep = preprocessing_of(checkpoint.squid_config())
    baselines = fit_baselines(training_films(checkpoint, progress))
    ae = load_autoencoder(autoencoder) if autoencoder else None
    runs = f"ensemble of {len(checkpoint.members) + 1}" if checkpoint.members else f"epoch {checkpoint.epoch}"
    squid_name = f"SQUID {checkpoint.config['name']} ({runs})"

    def squid(films: Films) -> NDArray[np.float64]:
        with torch.inference_mode():
            raw, _ = score_images(generator, discriminator, films.at(prep.size, prep.intensity))
        return calibration.apply(raw)

    scorers = {squid_name: squid, **baselines}
    out_dir = Path(out_dir)
    reports: dict[str, Any] = {}
    scored: list[Scored] = []
    structural: dict[str, dict[str, dict[str, Any]]] = {}
    for name, root, part in splits:
        films, labels = evaluation_films(checkpoint, root, part, progress)
        images = films.at(prep.size, prep.intensity)
        with torch.inference_mode():
            raw, recon = score_images(generator, discriminator, images)
        scores = calibration.apply(raw)
        context = {
            "checkpoint": str(checkpoint_path),
            "data": str(root),
            "split": part,
            "epoch": checkpoint.epoch,
            "score_norm": checkpoint.score_norm,
            "threshold_rule": checkpoint.threshold["rule"],
            "preset": checkpoint.config["name"],
        }
        threshold = float(checkpoint.threshold["value"])
        reports[name] = write_report(out_dir / name, labels, scores, threshold, images, recon, context)
        scored.append(Scored(squid_name, name, labels, scores))
        scored += [Scored(method, name, labels, score(films)) for method, score in baselines.items()]
        if ae is not None:
            errors = reconstruction_errors(ae, images)
            scored.append(Scored("auto-encoder (recon. error)", name, labels, errors))
        normals = [film for film, label in zip(films.films, labels, strict=True) if label == 0]
        if anomalies and len(normals) >= MIN_NORMALS and not is_digit_folder(root):
            altered = structural_set(name, Films(normals))
            for method, score in scorers.items():
                structural.setdefault(method, {})[name] = structural_aucs(score_set(score, altered))
    comparison = write_comparison(out_dir, scored)
    write_training_curves(out_dir / "training_curves.png", checkpoint.history, checkpoint.epoch)
    report: dict[str, Any] = {"splits": reports, "comparison": comparison}
    if structural:
        report["structural"] = write_structural(out_dir, structural, comparison["auc"])
    return report


def _split_name(root: Path, taken: list[str]) -> str:
    name = Path(root).stem or "data"
    while name in taken:
        name += "'"
    return name


def parity_images(checkpoint: ckpt.Checkpoint, data_root: Path | None, count: int) -> NDArray[np.float32]:
    """Real images for the export parity check: from ``data_root`` or the checkpoint's training data."""
    root = Path(data_root or checkpoint.data.get("root", ""))
    if not root.is_dir() and not root.is_file():
        raise FileNotFoundError(f"no images for the parity check: {root} does not exist (pass --data)")
    prep = preprocessing_of(checkpoint.squid_config())
    if is_digit_folder(root):
        images, _ = digit_anatomy.make_set(digit_anatomy.load_mnist(root), count, 0, seed=12345)
        return _resize(images, prep)
    records = folders.scan_dataset(root)
    step = max(1, len(records) // count)
    return folders.load_images(records[::step][:count], prep, progress=False)
