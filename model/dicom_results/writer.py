"""Result objects as DICOM Part 10 bytes or files.

File names are ``<kind>-<SOP Instance UID>.dcm``: deterministic UIDs make a re-run overwrite its
earlier files instead of adding copies, and the write is atomic (temporary file, then rename), so a
PACS importer watching the folder never picks up half a file.
"""

from __future__ import annotations

import os
import tempfile
from io import BytesIO
from pathlib import Path

from pydicom import dcmwrite
from pydicom.dataset import Dataset

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
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / file_name(kind, dataset)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(to_bytes(dataset))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
