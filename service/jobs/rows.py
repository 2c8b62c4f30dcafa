"""Result rows: one per file of a job, the study roll-up, and their CSV / JSON Lines encodings.

Reason codes are those of ``POST /score`` (:class:`model.imaging.Reason`) plus a few only a folder
walk or a worker can meet: ``kills_worker`` (the file alone stopped its worker process every time it
was tried: :mod:`service.jobs.isolation`), ``worker_lost`` (its chunk kept being lost between files),
``model_mismatch`` (no worker with the job's model took it). A *skipped* file is not scoreable by
design (not an image, no pixels); an *out_of_domain* file is an image the domain gate
(:mod:`model.domain`) refused, with its reasons in ``domain_reasons``; a *failed* file should have
been scoreable but could not be read, decoded or scored. ``warnings`` are the soft findings of every
decoded file (``outside_training_population`` among them).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from model.imaging import Reason as ImageReason


class Status(StrEnum):
    SCORED = "scored"
    SKIPPED = "skipped"
    OUT_OF_DOMAIN = "out_of_domain"
    FAILED = "failed"


class Reason(StrEnum):
    """Every reason code a row can carry; the first seven are exactly the ``POST /score`` codes."""

    UNSUPPORTED_FORMAT = ImageReason.UNSUPPORTED_FORMAT.value
    NO_PIXEL_DATA = ImageReason.NO_PIXEL_DATA.value
    OUT_OF_DOMAIN = ImageReason.OUT_OF_DOMAIN.value
    UNDECODABLE = ImageReason.UNDECODABLE.value
    IMAGE_TOO_LARGE = ImageReason.IMAGE_TOO_LARGE.value
    EMPTY_IMAGE = ImageReason.EMPTY_IMAGE.value
    DICOMDIR = "dicomdir"
    OUTSIDE_ROOT = "outside_root"
    UNREADABLE = "unreadable"
    MISSING_FILE = "missing_file"
    INFERENCE_ERROR = "inference_error"
    MODEL_MISMATCH = "model_mismatch"
    WORKER_LOST = "worker_lost"
    KILLS_WORKER = "kills_worker"
    SYMLINK_LOOP = "symlink_loop"
    NAME_TOO_LONG = "name_too_long"
    PATH_CONFLICT = "path_conflict"


SKIPPED_REASONS = frozenset(
    {
        Reason.UNSUPPORTED_FORMAT,
        Reason.NO_PIXEL_DATA,
        Reason.DICOMDIR,
        Reason.OUTSIDE_ROOT,
    }
)


def status_for(reason: str) -> Status:
    """Skipped (not scoreable by design), out of the model's domain, or failed (should have scored)."""
    if reason == Reason.OUT_OF_DOMAIN:
        return Status.OUT_OF_DOMAIN
    return Status.SKIPPED if reason in SKIPPED_REASONS else Status.FAILED


INSTANCE_COLUMNS = (
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
)
STUDY_COLUMNS = (
    "study_instance_uid",
    "images",
    "scored",
    "max_score",
    "flagged",
    "threshold",
    "model_version",
)
DECIMALS = 6
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class Row:
    """One file's outcome. ``score``/``is_anomalous``/``threshold`` are set only when scored."""

    path: str
    status: str
    model_version: str
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    sop_instance_uid: str = ""
    score: float | None = None
    is_anomalous: bool | None = None
    threshold: float | None = None
    reason: str = ""
    detail: str = ""
    # The domain gate's reasons of an out_of_domain row, and every row's soft findings (published).
    domain_reasons: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    # For the worklist (service.worklist), kept in the chunk files only, not in the published CSV:
    accession_number: str = ""
    study_date: str = ""  # DICOM YYYYMMDD

    def to_json(self) -> dict[str, Any]:
        """Lossless form used in chunk files (full-precision floats)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Row:
        lists = {name: tuple(data.get(name) or ()) for name in ("warnings", "domain_reasons")}
        return cls(**{**data, **lists})

    @classmethod
    def rejected(cls, path: str, reason: str, detail: str, model_version: str, **uids: str) -> Row:
        return cls(
            path,
            status_for(reason).value,
            model_version,
            study_instance_uid=uids.get("study_instance_uid", ""),
            series_instance_uid=uids.get("series_instance_uid", ""),
            sop_instance_uid=uids.get("sop_instance_uid", ""),
            reason=reason,
            detail=detail,
        )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, DECIMALS)


def instance_record(row: Row) -> dict[str, Any]:
    """The published form of a row (rounded scores), in column order."""
    record = asdict(row)
    record["score"], record["threshold"] = _round(row.score), _round(row.threshold)
    record["domain_reasons"], record["warnings"] = list(row.domain_reasons), list(row.warnings)
    return {column: record[column] for column in INSTANCE_COLUMNS}


def study_records(rows: Iterable[Row]) -> list[dict[str, Any]]:
    """One record per study UID: images counted, max score over its scored (frontal) images, flagged.

    Rows without a Study Instance UID (PNG/JPEG, junk) belong to no study. ``flagged`` is empty when
    none of the study's images could be scored.
    """
    studies: dict[str, list[Row]] = {}
    for row in rows:
        if row.study_instance_uid:
            studies.setdefault(row.study_instance_uid, []).append(row)
    records = []
    for uid in sorted(studies):
        members = studies[uid]
        scored = [row for row in members if row.status == Status.SCORED and row.score is not None]
        best = max(scored, key=lambda row: row.score or 0.0) if scored else None
        records.append(
            {
                "study_instance_uid": uid,
                "images": len(members),
                "scored": len(scored),
                "max_score": _round(best.score) if best else None,
                "flagged": any(bool(row.is_anomalous) for row in scored) if scored else None,
                "threshold": _round(best.threshold) if best else None,
                "model_version": members[0].model_version,
            }
        )
    return records


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.{DECIMALS}f}"
    if isinstance(value, list):
        value = ";".join(str(item) for item in value)
    text = str(value)
    # A spreadsheet runs a cell starting with these as a formula (a file named "=cmd|..."): quote it.
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def to_csv(records: Iterable[dict[str, Any]], columns: tuple[str, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow([_csv_value(record[column]) for column in columns])
    return buffer.getvalue()


def to_jsonl(records: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(record, ensure_ascii=False, sort_keys=False) + "\n" for record in records)
