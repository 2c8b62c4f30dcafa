"""Header-only DICOM reads the batch jobs need (DICOMDIR records, the UIDs of a refused file).

Kept in :mod:`model.imaging` with the rest of the DICOM parsing, so the service never calls pydicom
itself. Nothing here decodes pixels, and nothing returns patient identifiers.
"""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path

from pydicom import dcmread

UID_TAGS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def is_dicomdir(path: Path) -> bool:
    """Whether ``path`` is a DICOM media directory (a file merely named DICOMDIR is not)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(path, stop_before_pixels=True, specific_tags=["DirectoryRecordSequence"])
        return "DirectoryRecordSequence" in ds
    except Exception:
        return False


def dicomdir_file_ids(path: Path) -> list[tuple[str, ...]]:
    """The Referenced File IDs of a DICOMDIR's records, in record order (raises when unparsable)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = dcmread(path).DirectoryRecordSequence
    ids: list[tuple[str, ...]] = []
    for record in records:
        file_id = record.get("ReferencedFileID")
        if file_id:
            ids.append((file_id,) if isinstance(file_id, str) else tuple(str(part) for part in file_id))
    return ids


def peek_uids(data: bytes) -> tuple[str, str, str] | None:
    """Study, series and SOP instance UIDs of a DICOM byte string, or None when unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(BytesIO(data), force=True, stop_before_pixels=True, specific_tags=list(UID_TAGS))
        study, series, sop = (str(ds.get(tag, "") or "") for tag in UID_TAGS)
    except Exception:
        return None
    return study, series, sop


STUDY_TAGS = ("AccessionNumber", "StudyDate")


def peek_study(data: bytes) -> tuple[str, str]:
    """Accession Number and Study Date (``YYYYMMDD``) of a DICOM byte string; empty when absent.

    What a site needs to find a study in its PACS (the worklist shows them); not a patient
    identifier, but never logged either (:mod:`model.imaging.privacy` redacts accession numbers).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(BytesIO(data), force=True, stop_before_pixels=True, specific_tags=list(STUDY_TAGS))
        accession, date = (str(ds.get(tag, "") or "").strip() for tag in STUDY_TAGS)
    except Exception:
        return "", ""
    return accession[:64], date[:8] if len(date) >= 8 and date[:8].isdigit() else ""


def peek_patient(source: bytes | Path) -> tuple[str, str]:
    """Patient's Name and Patient ID: only for the worklist of a site that allows showing them
    (``SQUID_WORKLIST_PATIENT_IDENTIFIERS``); never for results, JSON answers by default, or logs."""
    tags = ["PatientName", "PatientID"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            where = BytesIO(source) if isinstance(source, bytes) else source
            ds = dcmread(where, force=True, stop_before_pixels=True, specific_tags=tags)
        name, patient_id = (str(ds.get(tag, "") or "").strip() for tag in tags)
    except Exception:
        return "", ""
    return name[:128], patient_id[:64]
