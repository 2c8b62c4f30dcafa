"""A small PACS export for the worklist tests: real chest films (ZhangLab, 224 px) wrapped as DICOM
studies with accession numbers and study dates, plus a lateral view and a file that is no image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.uid import generate_uid

from tests.dicom_factory import make_dicom


@dataclass(frozen=True)
class Study:
    accession: str
    date: str  # YYYYMMDD
    uid: str
    films: tuple[str, ...]  # "NORMAL/..." or "PNEUMONIA/..." under zhanglab-224/test-dev


def make_films(folder: Path, shared_data: Path, normals: int = 3, pneumonias: int = 3) -> list[Study]:
    """One study per film (the last pneumonia study also holds a normal film and a lateral view)."""
    source = shared_data / "zhanglab-224" / "test-dev"
    normal = sorted((source / "NORMAL").glob("*.jpeg"))[: normals + 1]
    pneumonia = sorted((source / "PNEUMONIA").glob("*.jpeg"))[:pneumonias]
    studies = []
    for number, film in enumerate([*normal[:normals], *pneumonia], start=1):
        films = [film]
        if number == normals + pneumonias:
            films.append(normal[normals])
        study = Study(
            accession=f"ACC{number:04d}",
            date=f"202612{number:02d}",
            uid=generate_uid(),
            films=tuple(f"{f.parent.name}/{f.name}" for f in films),
        )
        studies.append(study)
        for image, path in enumerate(films):
            write_film(folder / f"study-{number}" / f"{image}.dcm", path, study)
    last = studies[-1]
    lateral = np.asarray(Image.open(source / last.films[0]).convert("L"))
    (folder / f"study-{len(studies)}" / "lateral.dcm").write_bytes(
        make_dicom(lateral, bits_stored=8, view_position="LL", extra=_study_tags(last))
    )
    (folder / "notes.txt").write_text("not an image\n")
    return studies


def write_film(target: Path, film: Path, study: Study) -> None:
    pixels = np.asarray(Image.open(film).convert("L"))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(make_dicom(pixels, bits_stored=8, extra=_study_tags(study)))


def _study_tags(study: Study) -> dict[str, str]:
    return {"StudyInstanceUID": study.uid, "AccessionNumber": study.accession, "StudyDate": study.date}
