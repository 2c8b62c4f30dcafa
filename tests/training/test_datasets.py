"""Labelled datasets: class folders and path,label CSVs give the same records, splits and digests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import data as datasets
from training.pipeline import SplitSpec, prepare_data

PATIENTS = {
    "NORMAL": ["IM-0001", "IM-0002", "IM-0003", "NORMAL2-IM-0004"],
    "PNEUMONIA": ["person7", "person8"],
}


def _write_png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 48), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two films per patient, so a patient-level split is visible."""
    root = tmp_path / "folder"
    seed = 0
    for cls, patients in PATIENTS.items():
        for patient in patients:
            for film in (1, 2):
                name = f"{patient}-{film:04d}.jpeg" if cls == "NORMAL" else f"{patient}_bacteria_{film}.jpeg"
                _write_png(root / cls / name, seed)
                seed += 1
    return root


def _as_csv(folder: Path, csv_path: Path, header: bool, label_style: str) -> None:
    lines = ["path,label"] if header else []
    for record in datasets.scan_folder(folder):
        if label_style == "numbers":
            label = str(record.label)
        else:
            label = "Normal" if record.label == 0 else "pneumonia"
        lines.append(f"{Path('..', 'folder', record.path.relative_to(folder)).as_posix()},{label}")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_folder_labels_normal_zero_and_every_other_class_one(folder: Path) -> None:
    records = datasets.scan_folder(folder)
    assert len(records) == 12
    assert [r.label for r in records] == [0] * 8 + [1] * 4
    assert records == sorted(records, key=lambda r: r.path)


@pytest.mark.parametrize(("header", "label_style"), [(True, "numbers"), (False, "names")])
def test_csv_lists_the_same_records_as_the_folder(
    folder: Path, tmp_path: Path, header: bool, label_style: str
) -> None:
    csv_path = tmp_path / "lists" / "data.csv"
    _as_csv(folder, csv_path, header, label_style)
    from_csv = datasets.scan_dataset(csv_path)
    from_folder = datasets.scan_dataset(folder)
    assert [(r.path.resolve(), r.label) for r in from_csv] == [(r.path, r.label) for r in from_folder]


def test_csv_and_folder_train_on_the_same_split_with_the_same_digest(folder: Path, tmp_path: Path) -> None:
    """A CSV beside the class folders names the images as the folder does, so the digests agree."""
    inside = folder / "labels.csv"
    rows = [f"{r.path.relative_to(folder).as_posix()},{r.label}" for r in datasets.scan_folder(folder)]
    inside.write_text("path,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    elsewhere = tmp_path / "absolute.csv"
    rows = [f"{r.path},{r.label}" for r in datasets.scan_folder(folder)]
    elsewhere.write_text("\n".join(rows) + "\n", encoding="utf-8")
    split = SplitSpec(val_normal=2, val_anomalous=2, seed=3)
    a, b, c = (prepare_data(source, 32, split, progress=False) for source in (folder, inside, elsewhere))
    for other in (b, c):
        np.testing.assert_array_equal(a.train, other.train)
        np.testing.assert_array_equal(a.val_images, other.val_images)
        np.testing.assert_array_equal(a.val_labels, other.val_labels)
    assert a.source["n_train"] == 6
    assert a.source["digest"] == b.source["digest"]


def test_the_split_keeps_each_patient_on_one_side(folder: Path) -> None:
    records = datasets.scan_folder(folder)
    parts = datasets.split_records(records, val_normal=3, val_anomalous=1, seed=0)
    train_patients = {datasets.patient_key(r.path) for r in parts.train}
    val_patients = {datasets.patient_key(r.path) for r in parts.validation}
    assert not train_patients & val_patients
    assert sum(r.label == 0 for r in parts.validation) == 4  # whole patients: 2 films each, >= 3
    assert all(r.label == 0 for r in parts.train)
    assert parts == datasets.split_records(records, val_normal=3, val_anomalous=1, seed=0)


def test_the_digest_changes_with_a_label_or_a_file(folder: Path) -> None:
    records = datasets.scan_folder(folder)
    digest = datasets.data_digest(records, folder)
    relabelled = [datasets.ImageRecord(records[0].path, 1), *records[1:]]
    assert datasets.data_digest(relabelled, folder) != digest
    _write_png(records[1].path, seed=999)
    assert datasets.data_digest(records, folder) != digest


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        ("path,label\nmissing.png,0\n", FileNotFoundError, "data.csv:2: image not found"),
        ("path,label\nimg.png\n", ValueError, "data.csv:2: expected 'path,label'"),
        ("img.png,1\n", ValueError, "no normal (label 0) images"),
    ],
)
def test_bad_csv_rows_are_named_by_line(
    tmp_path: Path, content: str, error: type[Exception], message: str
) -> None:
    _write_png(tmp_path / "img.png", 0)
    (tmp_path / "data.csv").write_text(content, encoding="utf-8")
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        datasets.scan_dataset(tmp_path / "data.csv")
