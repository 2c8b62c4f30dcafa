"""Labelled image datasets: scanning, a reproducible validation split, and loading into memory.

A dataset is either a folder with one sub-folder per class, ``NORMAL`` (any case) being label 0 and
every other class folder anomalous (label 1), or a CSV file of ``path,label`` rows (paths relative
to the CSV's folder or absolute; label ``0``/``normal`` or ``1``/any other class name; an optional
``path,label`` header). Only normals are ever trained on.
"""

from __future__ import annotations

import csv
import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from model.preprocess import Preprocessing

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ""}
NORMAL_NAMES = {"normal", "normal_256"}
# ZhangLab names carry the patient: IM-0115-0001, NORMAL2-IM-1427-0001, person1000_bacteria_2931.
PATIENT_PATTERNS = (re.compile(r"^((?:NORMAL2-)?IM-\d+)"), re.compile(r"^(person\d+)_"))


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    label: int


@dataclass(frozen=True)
class Split:
    train: list[ImageRecord]
    validation: list[ImageRecord]


def scan_folder(root: Path) -> list[ImageRecord]:
    """All images under ``root/<class>/``, sorted by path so every run sees the same order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    records = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        label = 0 if class_dir.name.lower() in NORMAL_NAMES else 1
        for path in sorted(class_dir.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                records.append(ImageRecord(path, label))
    if not any(r.label == 0 for r in records):
        raise ValueError(f"no NORMAL/ class folder with images under {root}")
    return records


def scan_csv(csv_path: Path) -> list[ImageRecord]:
    """The ``path,label`` rows of a CSV file, in file order; every path must exist."""
    csv_path = Path(csv_path)
    base = csv_path.parent
    records = []
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if line == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise ValueError(f"{csv_path}:{line}: expected 'path,label', got {','.join(row)!r}")
            path = base / row[0].strip()
            if not path.is_file():
                raise FileNotFoundError(f"{csv_path}:{line}: image not found: {path}")
            records.append(ImageRecord(path, _csv_label(row[1])))
    if not any(r.label == 0 for r in records):
        raise ValueError(f"no normal (label 0) images listed in {csv_path}")
    return records


def _csv_label(value: str) -> int:
    label = value.strip().lower()
    return 0 if label == "0" or label in NORMAL_NAMES else 1


def scan_dataset(source: Path) -> list[ImageRecord]:
    """A class-folder tree or a ``path,label`` CSV file (see the module docstring)."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        return scan_csv(source)
    return scan_folder(source)


def dataset_root(source: Path) -> Path:
    """The folder relative paths of a dataset are named from (for digests and provenance)."""
    source = Path(source)
    return source.parent if source.is_file() else source


def patient_key(path: Path) -> str:
    """The patient an image belongs to, from the file name; the file itself when unknown."""
    for pattern in PATIENT_PATTERNS:
        match = pattern.match(path.stem)
        if match:
            return f"{path.parent.name}/{match.group(1)}"
    return f"{path.parent.name}/{path.stem}"


def _hold_out(records: list[ImageRecord], target: int, rng: random.Random) -> set[str]:
    """Whole patients, in random order, until at least ``target`` images are held out."""
    groups: dict[str, int] = {}
    for record in records:
        key = patient_key(record.path)
        groups[key] = groups.get(key, 0) + 1
    chosen: set[str] = set()
    count = 0
    for key in rng.sample(sorted(groups), len(groups)):
        if count >= target:
            break
        chosen.add(key)
        count += groups[key]
    return chosen


def split_records(records: Sequence[ImageRecord], val_normal: int, val_anomalous: int, seed: int) -> Split:
    """Hold out a validation split by patient (the paper used 100 + 100 images).

    Images of one patient never straddle training and validation, so validation AUC is not inflated
    by a patient's other films being in the training set. Training uses the remaining normals.
    """
    normals = [r for r in records if r.label == 0]
    anomalous = [r for r in records if r.label == 1]
    if val_normal >= len(normals):
        raise ValueError(f"cannot hold out {val_normal} of {len(normals)} normal images")
    rng = random.Random(seed)
    held = _hold_out(normals, val_normal, rng) | _hold_out(anomalous, val_anomalous, rng)
    validation = [r for r in records if patient_key(r.path) in held]
    train = [r for r in normals if patient_key(r.path) not in held]
    return Split(train=train, validation=validation)


def data_digest(records: Sequence[ImageRecord], root: Path) -> str:
    """sha256 over the relative paths, labels and sizes: names the exact training data used."""
    digest = hashlib.sha256()
    for record in sorted(records, key=lambda r: r.path):
        rel = (
            record.path.relative_to(root).as_posix()
            if record.path.is_relative_to(root)
            else record.path.as_posix()
        )
        digest.update(f"{rel}\t{record.label}\t{record.path.stat().st_size}\n".encode())
    return digest.hexdigest()


def load_images(
    records: Sequence[ImageRecord],
    preprocessing: Preprocessing | int,
    progress: bool = True,
    desc: str = "loading",
) -> NDArray[np.float32]:
    """Decode and preprocess records into an (N, size, size) float32 array with the serving path
    (an int means min-max preprocessing at that size)."""
    from model.imaging import read_path

    prep = preprocessing if isinstance(preprocessing, Preprocessing) else Preprocessing(preprocessing)
    out = np.empty((len(records), prep.size, prep.size), dtype=np.float32)
    for i, record in enumerate(tqdm(records, desc=desc, disable=not progress, unit="img")):
        out[i] = prep(read_path(record.path).pixels)
    return out


def labels_of(records: Sequence[ImageRecord]) -> NDArray[np.int64]:
    return np.array([r.label for r in records], dtype=np.int64)
