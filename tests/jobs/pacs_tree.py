"""Build PACS-export-like trees from real chest X-rays, with the outcome every file must get.

The images are real (ZhangLab pediatric chest JPEGs, the fo-dicom and torchxrayvision chest DICOMs);
the DICOM wrappers are written with pydicom in several transfer syntaxes and both photometric
interpretations, with sentinel patient identifiers that must never appear in results or logs.
"""

from __future__ import annotations

import csv
import functools
import os
import shutil
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.fileset import FileSet
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGLSLossless,
    KeyObjectSelectionDocumentStorage,
    RLELossless,
    generate_uid,
)

from tests.dicom_factory import make_dicom

PATIENT_NAME = "SENTINEL^PATIENTNAME"
PATIENT_ID = "SENTINEL-PID-7731"
BIRTH_DATE = "19010203"
SENTINELS = ("SENTINEL", "PATIENTNAME", "PID-7731", BIRTH_DATE)
IDENTIFIERS: dict[str, Any] = {
    "patient_name": PATIENT_NAME,
    "patient_id": PATIENT_ID,
    "birth_date": BIRTH_DATE,
}


@dataclass
class Expected:
    """Per path (relative to the tree root): (status, reason), and the SOP UID of each DICOM."""

    outcome: dict[str, tuple[str, str]] = field(default_factory=dict)
    sop: dict[str, str] = field(default_factory=dict)
    study: dict[str, str] = field(default_factory=dict)
    domain: dict[str, str] = field(default_factory=dict)  # the domain gate's reasons, ';'-joined
    warning: dict[str, str] = field(default_factory=dict)  # a warning the row must carry

    def failures(self) -> dict[str, int]:
        """Failed files by reason (what a job's view shows as ``failures``)."""
        return dict(Counter(reason for status, reason in self.outcome.values() if status == "failed"))

    def failed_summary(self) -> str:
        """How ``squid batch`` sums the failed files up: ``failed 3 (empty_image 1, ...)``."""
        failures = self.failures()
        reasons = ", ".join(f"{reason} {number}" for reason, number in sorted(failures.items()))
        return f"failed {sum(failures.values())} ({reasons})"

    def add(
        self, path: str, status: str, reason: str = "", sop: str = "", study: str = "", domain: str = ""
    ) -> None:
        self.outcome[path] = (status, reason)
        self.domain[path] = domain
        if sop:
            self.sop[path] = sop
        if study:
            self.study[path] = study


INSTANCE_HEADER = [
    "path",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "score",
    "is_anomalous",
    "threshold",
    "status",
    "reason",
    "model_version",
    "detail",
    "domain_reasons",
    "warnings",
]


def read_instances(folder: Path) -> list[dict[str, str]]:
    with (folder / "instances.csv").open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == INSTANCE_HEADER
        return list(reader)


def check_rows_against(rows: list[dict[str, str]], expected: Expected) -> None:
    """Every file exactly once, with its status, reason and UIDs; scores only on scored rows."""
    paths = [row["path"] for row in rows]
    assert len(paths) == len(set(paths)), "a file has more than one row"
    assert set(paths) == set(expected.outcome)
    for row in rows:
        path = row["path"]
        assert (row["status"], row["reason"]) == expected.outcome[path], path
        assert row["domain_reasons"] == expected.domain.get(path, ""), path
        if path in expected.warning:
            assert expected.warning[path] in row["warnings"].split(";"), path
        assert row["sop_instance_uid"] == expected.sop.get(path, ""), path
        assert row["study_instance_uid"] == expected.study.get(path, ""), path
        if row["status"] == "scored":
            score, threshold = float(row["score"]), float(row["threshold"])
            assert 0.0 <= score <= 1.0
            assert row["is_anomalous"] == ("true" if score >= threshold else "false")
        else:
            assert row["score"] == row["is_anomalous"] == row["threshold"] == ""
        assert row["model_version"]


def chest_pixels(data: Path, kind: str, index: int) -> np.ndarray[Any, Any]:
    """A real ZhangLab image (8-bit gray) as 12-bit stored values."""
    return film_pixels(sorted((data / "zhanglab-224" / "train" / kind).glob("*.jpeg"))[index])


def film_pixels(path: Path) -> np.ndarray[Any, Any]:
    """An 8-bit gray film as 12-bit stored values."""
    return np.asarray(Image.open(path).convert("L"), dtype=np.uint16) * 16


def _dicom(pixels: np.ndarray[Any, Any], *, mono1: bool = False, **kwargs: Any) -> bytes:
    stored = 4095 - pixels if mono1 else pixels
    photometric = "MONOCHROME1" if mono1 else "MONOCHROME2"
    return make_dicom(stored, photometric=photometric, bits_stored=12, **IDENTIFIERS, **kwargs)


def _study_fields(study: str, series: str, number: int) -> dict[str, Any]:
    return {
        "StudyInstanceUID": study,
        "SeriesInstanceUID": series,
        "StudyTime": "101010",
        "StudyID": "1",
        "AccessionNumber": "ACC1",
        "SeriesNumber": 1,
        "InstanceNumber": number,
        "ReferringPhysicianName": "",
    }


def _no_pixel_object(modality: str, study: str, sop_class: str | None = None) -> Dataset:
    extra = {
        **_study_fields(study, generate_uid(), 1),
        "ContentDate": "20240102",
        "ContentTime": "101010",
        "VerificationFlag": "UNVERIFIED",
        "CompletionFlag": "COMPLETE",
    }
    data = make_dicom(
        None, modality=modality, with_pixels=False, sop_class=sop_class, extra=extra, **IDENTIFIERS
    )
    ds: Dataset = dcmread(BytesIO(data))
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = (
        "18748-4",
        "LN",
        "Diagnostic imaging report",
    )
    ds.ConceptNameCodeSequence = [code]
    return ds


def build_pacs_tree(root: Path, data: Path) -> Expected:
    """The full tree of the integration test; returns what every file must become."""
    root.mkdir(parents=True, exist_ok=True)
    expected = Expected()

    # 1. A media export with a DICOMDIR (pydicom FileSet): files without extension in
    #    PT*/ST*/SE*/IM* folders, a lateral view, an SR, and one referenced file that goes missing.
    fs = FileSet()
    study = generate_uid()
    series = generate_uid()
    members: list[tuple[Dataset, str, str]] = []
    ds: Dataset
    images: list[tuple[dict[str, Any], bool, str, str]] = [
        (dict(), False, "scored", ""),
        (dict(transfer_syntax=RLELossless), True, "scored", ""),
        (dict(transfer_syntax=JPEG2000Lossless, view_position="AP"), False, "scored", ""),
        (dict(view_position="LL"), False, "out_of_domain", "out_of_domain"),
        (dict(), False, "failed", "missing_file"),
    ]
    for number, (kwargs, mono1, status, reason) in enumerate(images, start=1):
        pixels = chest_pixels(data, "NORMAL", number)
        ds = dcmread(
            BytesIO(_dicom(pixels, mono1=mono1, extra=_study_fields(study, series, number), **kwargs))
        )
        members.append((ds, status, reason))
    sr = _no_pixel_object("SR", study)
    members.append((sr, "skipped", "no_pixel_data"))
    for ds, _, _ in members:
        fs.add(ds)
    export = root / "export"
    fs.write(export)
    expected.add("export/DICOMDIR", "skipped", "dicomdir")
    for instance in fs:
        rel = "export/" + Path(instance.path).relative_to(export).as_posix()
        ds, status, reason = next(m for m in members if m[0].SOPInstanceUID == instance.SOPInstanceUID)
        if reason == "missing_file":
            Path(instance.path).unlink()
            expected.add(rel, status, reason)
            continue
        domain = "view" if status == "out_of_domain" else ""
        expected.add(rel, status, reason, sop=str(ds.SOPInstanceUID), study=study, domain=domain)

    # 2. Nested patient/study/series folders without a DICOMDIR, with and without .dcm.
    series_dir = root / "PATIENT_B" / "STUDY_20240102" / "SERIES_1"
    series_dir.mkdir(parents=True)
    study_b, series_b = generate_uid(), generate_uid()
    files: list[tuple[str, bytes, str, str, str]] = []
    plain: list[tuple[str, dict[str, Any], bool, str]] = [
        ("IMG0001.dcm", dict(transfer_syntax=JPEGLSLossless), False, "PNEUMONIA"),
        ("IMG0002", dict(), True, "PNEUMONIA"),
        ("IMG0003.dcm", dict(modality="CR"), False, "NORMAL"),
    ]
    for number, (name, kwargs, mono1, kind) in enumerate(plain, start=1):
        pixels = chest_pixels(data, kind, number + 10)
        extra = _study_fields(study_b, series_b, number) | ({"PatientAge": "045Y"} if number == 3 else {})
        files.append((name, _dicom(pixels, mono1=mono1, extra=extra, **kwargs), "scored", "", ""))
    # an adult's age on a frontal chest film: scored, with the population warning
    expected.warning[series_dir.relative_to(root).joinpath("IMG0003.dcm").as_posix()] = (
        "outside_training_population"
    )
    truncated = _dicom(chest_pixels(data, "NORMAL", 20), extra=_study_fields(study_b, series_b, 9))
    files.append(("IMG0009.dcm", truncated[: len(truncated) * 2 // 3], "failed", "undecodable", ""))
    ct = make_dicom(np.zeros((32, 32), np.uint16) + 100, modality="CT", **IDENTIFIERS)
    files.append(("CT0001.dcm", ct, "out_of_domain", "out_of_domain", "modality"))
    hip = _dicom(chest_pixels(data, "NORMAL", 21), body_part="HIP")
    files.append(("HIP0001", hip, "out_of_domain", "out_of_domain", "body_part"))
    # a lateral film named only in the series description (ViewPosition empty)
    lateral = _dicom(
        chest_pixels(data, "NORMAL", 22), view_position="", extra={"SeriesDescription": "CHEST LAT"}
    )
    files.append(("LAT0001.dcm", lateral, "out_of_domain", "out_of_domain", "view"))
    ko = _no_pixel_object("KO", study_b, KeyObjectSelectionDocumentStorage)
    buffer = BytesIO()
    ko.save_as(buffer, enforce_file_format=True)
    files.append(("KO0001.dcm", buffer.getvalue(), "skipped", "no_pixel_data", ""))
    for name, payload, status, reason, domain in files:
        (series_dir / name).write_bytes(payload)
        ds = dcmread(BytesIO(payload), stop_before_pixels=True, force=True)
        uids = {"sop": str(ds.SOPInstanceUID), "study": str(ds.StudyInstanceUID)}  # even when refused
        path = series_dir.relative_to(root).joinpath(name).as_posix()
        expected.add(path, status, reason, domain=domain, **uids)

    # 3. Real chest DICOMs as they come: no File Meta (fo-dicom), JPEG baseline SC (torchxrayvision).
    real = root / "PATIENT_C" / "1"
    real.mkdir(parents=True)
    shared = data / "dicom"
    for source, name in (
        (shared / "fo-dicom" / "CR-MONO1-10-chest.dcm", "CHEST_NOMETA"),
        (
            shared / "torchxrayvision" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
            "txv.dcm",
        ),
    ):
        shutil.copyfile(source, real / name)
        ds = dcmread(real / name, stop_before_pixels=True, force=True)
        expected.add(
            f"PATIENT_C/1/{name}", "scored", sop=str(ds.SOPInstanceUID), study=str(ds.StudyInstanceUID)
        )

    # 4. Plain images, junk, an empty file and a link leading out of the tree.
    images_dir = root / "images"
    images_dir.mkdir()
    jpeg = sorted((data / "zhanglab-224" / "train" / "NORMAL").glob("*.jpeg"))[30]
    shutil.copyfile(jpeg, images_dir / "normal.jpeg")
    expected.add("images/normal.jpeg", "scored")
    png = BytesIO()
    Image.fromarray(chest_pixels(data, "PNEUMONIA", 31).astype(np.uint16)).save(png, format="PNG")
    (images_dir / "pneumonia").write_bytes(png.getvalue())
    expected.add("images/pneumonia", "scored")
    junk = root / "junk"
    junk.mkdir()
    (junk / "README.TXT").write_text("Exported by PACS viewer 1.0\n")
    (junk / "Thumbs.db").write_bytes(
        np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    )
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(200))
    (junk / "empty.dcm").write_bytes(b"")
    for rel in ("junk/README.TXT", "junk/Thumbs.db", ".DS_Store"):
        expected.add(rel, "skipped", "unsupported_format")
    expected.add("junk/empty.dcm", "failed", "empty_image")
    os.symlink(shared / "fo-dicom" / "CR-MONO1-10-chest.dcm", junk / "link_out.dcm")
    expected.add("junk/link_out.dcm", "skipped", "outside_root")
    return expected


@functools.cache
def scoreable_films(data: Path, kind: str, count: int) -> tuple[Path, ...]:
    """The first ``count`` training films of ``kind`` that the shipped artifact's domain gate lets
    through, in name order. The bulk trees are meant to be scored whole; the gate refuses about 1 in
    400 training films (docs/domain-gate.md), which would otherwise be an unplanned row."""
    from model.imaging import OutOfDomain
    from model.runtime import SquidRuntime
    from model.steps import prepare, verdict

    runtime = SquidRuntime(intra_op_threads=1)
    films: list[Path] = []
    for path in sorted((data / "zhanglab-224" / "train" / kind).glob("*.jpeg")):
        try:
            item = prepare(path.read_bytes(), runtime.preprocessing, 100_000_000, runtime.gate)
            verdict(runtime.gate, item, runtime.score(item.array[None], with_map=False)[0])
        except OutOfDomain:
            continue
        films.append(path)
        if len(films) == count:
            break
    return tuple(films)


def build_bulk_tree(root: Path, data: Path, count: int) -> list[str]:
    """``count`` real chest images (JPEG and 12-bit DICOM alternately) in series folders."""
    kinds = ("NORMAL", "PNEUMONIA")
    films = {kind: scoreable_films(data, kind, (count + 1) // 2) for kind in kinds}
    paths = []
    for index in range(count):
        kind = kinds[index % 2]
        folder = root / f"P{index // 20:03d}" / f"S{index // 5:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        source = films[kind][index // 2]
        if index % 2:
            name = f"IM{index:05d}"
            (folder / name).write_bytes(_dicom(film_pixels(source), mono1=index % 4 == 1))
        else:
            name = f"img{index:05d}.jpeg"
            shutil.copyfile(source, folder / name)
        paths.append((folder / name).relative_to(root).as_posix())
    return paths


def zip_tree(root: Path, target: Path) -> None:
    """Zip a tree (regular files only), paths relative to ``root``."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                archive.write(path, path.relative_to(root).as_posix())
