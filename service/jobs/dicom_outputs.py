"""Batch jobs with DICOM results: the SR and SC of every scored DICOM file, and their index.

Objects are written to ``<results>/dicom/<kind>-<SOP Instance UID>.dcm`` (deterministic UIDs: a
retried chunk or a re-run overwrites, never duplicates). Each chunk records what it wrote in
``.work/dicom/<index>.jsonl``, replaced atomically like the row files; publishing merges them into
``dicom_outputs.csv`` and ``dicom_outputs.jsonl``: one row per object, or one row with a reason for a
scored DICOM file that got none. PNG/JPEG files have no row (they have no study to file into).

The SC needs the display pixels, which a chunk drops after preprocessing to bound memory, so each
scored file is read and decoded once more here, one at a time, at the same reduced resolution
(:func:`model.steps.decode_side`): the pixels are those that were scored, and no file is decoded at
full size for its capture.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from model.dicom_results import ModelInfo, NotBuilt, build_for_upload
from model.imaging import ImageRejected, read_image
from model.runtime import ScoreResult, SquidRuntime
from model.steps import decode_side
from service.jobs.results import RESULT_FILES, atomic_write
from service.jobs.rows import Reason, to_csv, to_jsonl
from service.jobs.walker import resolve_inside

log = logging.getLogger(__name__)

FOLDER = "dicom"
CSV_NAME = RESULT_FILES[("dicom", "csv")]
JSONL_NAME = RESULT_FILES[("dicom", "jsonl")]
COLUMNS = ("path", "source_sop_instance_uid", "kind", "sop_instance_uid", "file", "reason", "detail")


def chunk_file(job_dir: Path, index: int) -> Path:
    return job_dir / ".work" / FOLDER / f"{index:06d}.jsonl"


def reset(job_dir: Path) -> None:
    """Forget the chunk records of an earlier run into the same folder (its objects are overwritten)."""
    shutil.rmtree(job_dir / ".work" / FOLDER, ignore_errors=True)


def records(
    runtime: SquidRuntime,
    root: Path,
    results: dict[str, ScoreResult],
    job_dir: Path,
    max_pixels: int,
) -> list[dict[str, Any]]:
    """Build and write the objects of scored files (``results``: path -> result); their records.

    Never raises for a single file: its record carries the reason. A results folder that cannot be
    written raises (``OSError``), so the chunk is retried instead of silently losing objects.
    """
    model = ModelInfo.from_metadata(runtime.metadata)
    min_side = decode_side(runtime.preprocessing)
    return [
        record
        for path, result in results.items()
        for record in _objects(root, path, result, model, job_dir, max_pixels, min_side)
    ]


def write_chunk(job_dir: Path, index: int, chunk_records: list[dict[str, Any]]) -> int:
    """Record what one chunk wrote (replacing an earlier delivery's record); returns its object count."""
    atomic_write(chunk_file(job_dir, index), to_jsonl(chunk_records))
    return sum(1 for record in chunk_records if record["kind"])


def _objects(
    root: Path,
    path: str,
    result: ScoreResult,
    model: ModelInfo,
    job_dir: Path,
    max_pixels: int,
    min_side: int,
) -> list[dict[str, Any]]:
    """The records of one file. A source that cannot be read or built gets a reason."""
    try:
        data = resolve_inside(root, path).read_bytes()
    except OSError as exc:  # the message would quote the path; the code says enough
        return [_row(path, "", reason=Reason.UNREADABLE, detail=exc.strerror or type(exc).__name__)]
    try:
        decoded = read_image(data, max_pixels=max_pixels, min_side=min_side)
        if decoded.info.format != "dicom":
            return []
        built = build_for_upload(data, decoded, result, model)
    except (NotBuilt, ImageRejected) as exc:  # ImageRejected: the file changed since it was scored
        log.warning("no SR/SC for a scored image: %s", exc.reason, extra={"detail": exc.detail})
        return [_row(path, "", reason=exc.reason, detail=exc.detail)]
    source_uid = decoded.info.sop_instance_uid or ""
    return [
        _row(
            path,
            source_uid,
            obj.kind,
            obj.sop_instance_uid,
            obj.write(job_dir / FOLDER).relative_to(job_dir).as_posix(),
        )
        for obj in built
    ]


def _row(
    path: str,
    source_uid: str,
    kind: str = "",
    sop_uid: str = "",
    file: str = "",
    *,
    reason: str = "",
    detail: str = "",
) -> dict[str, Any]:
    return dict(zip(COLUMNS, (path, source_uid, kind, sop_uid, file, reason, detail), strict=True))


def publish(job_dir: Path) -> int:
    """Merge the chunk records into ``dicom_outputs.csv`` / ``.jsonl``; returns the object count."""
    records = sorted(_read(job_dir), key=lambda record: (record["path"], record["kind"]))
    atomic_write(job_dir / CSV_NAME, to_csv(records, COLUMNS))
    atomic_write(job_dir / JSONL_NAME, to_jsonl(records))
    return sum(1 for record in records if record["kind"])


def _read(job_dir: Path) -> Iterable[dict[str, Any]]:
    for chunk in sorted((job_dir / ".work" / FOLDER).glob("*.jsonl")):
        for line in chunk.read_text(encoding="utf-8").splitlines():
            if line:
                yield json.loads(line)


def copy_published(job_dir: Path, out: Path) -> list[Path]:
    """Copy a job's DICOM results (objects and index) into ``out`` (``squid batch`` with a broker)."""
    copied = [Path(shutil.copy2(job_dir / name, out / name)) for name in (CSV_NAME, JSONL_NAME)]
    if (job_dir / FOLDER).is_dir():
        shutil.copytree(job_dir / FOLDER, out / FOLDER, dirs_exist_ok=True)
        copied.append(out / FOLDER)
    return copied


ARCHIVE_NAME = "dicom-outputs.zip"


def archive(job_dir: Path, index: Path) -> Path:
    """``dicom-outputs.zip`` of a finished job: its index and every object, stored (DICOM pixels
    compress poorly and the objects are large); made on the first download, then kept."""
    target = job_dir / ARCHIVE_NAME
    if target.is_file():
        return target
    fd, tmp = tempfile.mkstemp(dir=job_dir, prefix=f".{ARCHIVE_NAME}.", suffix=".tmp")
    try:
        with open(fd, "wb") as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as zipped:
            zipped.write(index, index.name)
            for path in sorted((job_dir / FOLDER).glob("*.dcm")):
                zipped.write(path, f"{FOLDER}/{path.name}")
        Path(tmp).replace(target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
