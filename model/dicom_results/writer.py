"""Result objects as DICOM Part 10 bytes or files.

File names are ``<kind>-<SOP Instance UID>.dcm``: deterministic UIDs make a re-run overwrite its
earlier files instead of adding copies, and the write is atomic (temporary file, then rename), so a
PACS importer watching the folder never picks up half a file.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from pydicom import dcmwrite
from pydicom.dataset import Dataset

from model.atomic import atomic_write_bytes

MEDIA_TYPE = "application/dicom"


def to_bytes(dataset: Dataset) -> bytes:
    """The dataset as a DICOM file (preamble, File Meta, its own transfer syntax)."""
    buffer = BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def file_name(kind: str, dataset: Dataset) -> str:
    return f"{kind}-{dataset.SOPInstanceUID}.dcm"


def write_file(kind: str, dataset: Dataset, folder: Path) -> Path:
    """Write ``dataset`` into ``folder`` (created if needed); returns the file's path."""
    target = folder / file_name(kind, dataset)
    atomic_write_bytes(target, to_bytes(dataset))
    return target
