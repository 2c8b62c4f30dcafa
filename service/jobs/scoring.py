"""Score one chunk of files: read, decode and preprocess each, run one batched inference, make rows.

The same function runs inside Celery workers and in-process (``squid batch``), on the shared scoring
path of :mod:`model.steps`, so batch and HTTP scores agree and both batch paths write identical
result files. A file can only ever fail itself: every per-file error becomes a row.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from model.domain import DomainGate
from model.imaging import ImageRejected, OutOfDomain
from model.imaging.headers import peek_study, peek_uids
from model.preprocess import Preprocessing
from model.runtime import ScoreResult, SquidRuntime
from model.steps import Prepared, decode_threads, in_threads, infer, prepare, verdict
from service.jobs.cache import ScoreCache
from service.jobs.rows import Reason, Row, Status
from service.jobs.state import COUNT_KEYS
from service.jobs.walker import FileEntry, resolve_inside
from service.payload import thumbnail_png

log = logging.getLogger(__name__)

STAGES = ("read", "decode", "preprocess", "inference", "write")
THUMBNAIL_SIDE = 96  # the worklist's thumbnails, drawn while the full-size pixels are still in memory
# Files larger than max(max_pixels * 8, 256 MiB) are refused unread (no image allowed could be that big).
BYTES_PER_PIXEL_LIMIT = 8
MIN_FILE_LIMIT = 256 << 20


def model_namespace(runtime: SquidRuntime) -> str:
    """What a cached score is valid for: the model version, its weights and the domain gate (its
    policy and calibration decide whether a file gets a score at all)."""
    meta = runtime.metadata
    return f"{meta.model_version}@{meta.weights_sha256[:16]}+gate.{runtime.gate.fingerprint()}"


@dataclass
class ChunkOutcome:
    """Rows in entry order, counts by outcome, and summed per-stage times (ms).

    Counts are stored disjoint: ``scored`` is fresh scores, ``resumed`` the scores taken from the
    resume cache (:func:`service.jobs.state.published_counts` makes the sum users see).
    ``results`` holds the result of each file scored fresh, by path (with its map when asked for).
    """

    rows: list[Row]
    counts: Counter[str] = field(default_factory=Counter)
    reasons: Counter[tuple[str, str]] = field(default_factory=Counter)
    timing_ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    inference_batch: int = 0
    results: dict[str, ScoreResult] = field(default_factory=dict)
    thumbnails: dict[str, bytes] = field(default_factory=dict)  # path -> PNG, for each decoded file

    def summary(self) -> dict[str, int]:
        return {key: int(self.counts.get(key, 0)) for key in COUNT_KEYS}

    def failures(self) -> dict[str, int]:
        """Failed rows by reason (what the job view shows as ``failures``)."""
        return {reason: n for (status, reason), n in sorted(self.reasons.items()) if status == Status.FAILED}

    def add(self, other: ChunkOutcome) -> None:
        """Take in the outcome of more files of the chunk (one file at a time after a lost delivery)."""
        self.rows += other.rows
        self.counts.update(other.counts)
        self.reasons.update(other.reasons)
        for stage, ms in other.timing_ms.items():
            self.timing_ms[stage] = self.timing_ms.get(stage, 0.0) + ms
        self.results.update(other.results)
        self.thumbnails.update(other.thumbnails)

    def add_row(self, row: Row) -> None:
        """A row decided without scoring (a file not tried again); it must not be a scored row."""
        self.rows.append(row)
        self.counts[row.status] += 1
        self.reasons[(row.status, row.reason)] += 1

    def to_json(self) -> dict[str, Any]:
        """Everything but ``results`` and ``thumbnails`` (kept in memory: a chunk finished in steps
        has the thumbnails of its last step only), for a chunk scored in steps."""
        return {
            "rows": [row.to_json() for row in self.rows],
            "counts": dict(self.counts),
            "reasons": [[status, reason, n] for (status, reason), n in self.reasons.items()],
            "timing_ms": self.timing_ms,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChunkOutcome:
        return cls(
            rows=[Row.from_json(row) for row in data["rows"]],
            counts=Counter(data["counts"]),
            reasons=Counter({(status, reason): n for status, reason, n in data["reasons"]}),
            timing_ms=dict(data["timing_ms"]),
        )


@dataclass
class _Pending:
    index: int
    entry: FileEntry
    digest: str
    item: Prepared
    study: tuple[str, str]  # accession number, study date


@dataclass
class _Read:
    """A file read and not in the resume cache: its bytes go to a decode thread."""

    entry: FileEntry
    digest: str
    data: bytes


def score_entries(
    runtime: SquidRuntime,
    root: Path,
    entries: list[FileEntry],
    *,
    cache: ScoreCache,
    max_pixels: int,
    with_map: bool = False,
    threads: int = 0,
    full_resolution: bool = False,
) -> ChunkOutcome:
    """Rows for ``entries`` (paths relative to ``root``), scoring what the cache does not know;
    ``with_map`` keeps each fresh result's anomaly map (DICOM outputs draw it).

    Files are read and looked up in the cache here, in order, and decoded on ``threads`` threads
    (0: :func:`model.steps.decode_threads`), a few files ahead of the one being collected, at the
    model's resolution unless ``full_resolution``.
    """
    version = runtime.metadata.model_version
    rows: list[Row | None] = [None] * len(entries)
    outcome = ChunkOutcome(rows=[])
    pending: list[_Pending] = []
    reads: Iterator[Row | _Read] = (
        _read_one(runtime, root, entry, cache, max_pixels, outcome) for entry in entries
    )
    decode = functools.partial(
        _decode_one, runtime.preprocessing, runtime.gate, max_pixels, version, full_resolution
    )
    for index, result in enumerate(in_threads(decode, reads, decode_threads(threads))):
        if isinstance(result, Row):
            rows[index] = result
        else:
            digest, item, study, thumbnail = result
            outcome.timing_ms["decode"] += item.timing_ms.get("decode", 0.0)
            outcome.timing_ms["preprocess"] += item.timing_ms.get("preprocess", 0.0)
            outcome.thumbnails[entries[index].path] = thumbnail
            pending.append(_Pending(index, entries[index], digest, item, study))
    if pending:
        try:
            results, inference_ms = infer(runtime, [p.item for p in pending], with_map)
        except Exception as exc:  # the model failing on a batch fails its files, not the job
            log.exception("inference failed for a batch of %d files", len(pending))
            for p in pending:
                rows[p.index] = replace(
                    Row.rejected(
                        p.entry.path, Reason.INFERENCE_ERROR, type(exc).__name__, version, **_uids(p.item)
                    ),
                    accession_number=p.study[0],
                    study_date=p.study[1],
                )
        else:
            outcome.timing_ms["inference"] += inference_ms
            outcome.inference_batch = len(pending)
            fresh: dict[str, dict[str, object]] = {}
            for p, res in zip(pending, results, strict=True):
                uids = _uids(p.item)
                try:
                    verdict(runtime.gate, p.item, res)
                except OutOfDomain as exc:  # the image check: no score, no label, and no SR/SC
                    row = _out_of_domain_row(p.entry.path, exc, version, uids)
                    rows[p.index] = replace(row, accession_number=p.study[0], study_date=p.study[1])
                    continue
                warnings = tuple(p.item.decoded.warnings)
                row = _scored_row(p.entry.path, version, runtime.threshold, res.score, uids)
                rows[p.index] = replace(
                    row, accession_number=p.study[0], study_date=p.study[1], warnings=warnings
                )
                outcome.counts["scored"] += 1
                outcome.results[p.entry.path] = res
                fresh[p.digest] = {
                    "score": res.score,
                    "raw_score": res.raw_score,
                    "warnings": warnings,
                    **uids,
                }
            try:
                cache.put_many(fresh)
            except Exception:  # losing a cache write costs a rescore later, never a row
                log.warning("could not record %d scores in the resume cache", len(fresh))
    outcome.rows = [row for row in rows if row is not None]
    for row in outcome.rows:
        if row.status != Status.SCORED:  # scored rows were counted as fresh or resumed where made
            outcome.counts[row.status] += 1
            for reason in row.domain_reasons or (row.reason,):
                outcome.reasons[(row.status, reason)] += 1
    return outcome


def _read_one(
    runtime: SquidRuntime,
    root: Path,
    entry: FileEntry,
    cache: ScoreCache,
    max_pixels: int,
    outcome: ChunkOutcome,
) -> Row | _Read:
    """Read, hash and look up one file (in the caller's thread: the caches are not thread-safe)."""
    version = runtime.metadata.model_version
    if entry.preset:
        return Row.rejected(entry.path, entry.preset, entry.detail, version)
    start = time.perf_counter()
    try:
        path = resolve_inside(root, entry.path)
        if path.stat().st_size > max(max_pixels * BYTES_PER_PIXEL_LIMIT, MIN_FILE_LIMIT):
            return Row.rejected(
                entry.path, Reason.IMAGE_TOO_LARGE, "file larger than any image allowed", version
            )
        data = path.read_bytes()
    except PermissionError as exc:
        return Row.rejected(entry.path, Reason.OUTSIDE_ROOT, str(exc), version)
    except RuntimeError:  # a symbolic link loop made after the walk
        return Row.rejected(entry.path, Reason.SYMLINK_LOOP, "symbolic link loop", version)
    except OSError as exc:  # the message would quote the path; the code says enough
        return Row.rejected(entry.path, Reason.UNREADABLE, exc.strerror or type(exc).__name__, version)
    digest = hashlib.sha256(data).hexdigest()
    outcome.timing_ms["read"] += (time.perf_counter() - start) * 1e3
    try:
        cached = cache.get_many([digest]).get(digest)
    except Exception:
        cached = None
        log.warning("resume cache unavailable; scoring anyway")
    if cached is not None:
        outcome.counts["resumed"] += 1
        uids = {
            key: str(cached.get(key, ""))
            for key in ("study_instance_uid", "series_instance_uid", "sop_instance_uid")
        }
        row = _scored_row(entry.path, version, runtime.threshold, float(cached["score"]), uids)
        accession, date = peek_study(data)
        warnings = tuple(str(code) for code in cached.get("warnings") or ())
        return replace(row, accession_number=accession, study_date=date, warnings=warnings)
    return _Read(entry, digest, data)


def _decode_one(
    preprocessing: Preprocessing,
    gate: DomainGate,
    max_pixels: int,
    version: str,
    full_resolution: bool,
    read: Row | _Read,
) -> Row | tuple[str, Prepared, tuple[str, str], bytes]:
    """Decode and preprocess one read file (in a decode thread), past the domain gate's header and
    image rules; a rejection becomes its row. With the decoded pixels still in memory, the
    worklist's thumbnail and the study's identifiers."""
    if isinstance(read, Row):
        return read
    try:
        item = prepare(read.data, preprocessing, max_pixels, gate, full_resolution=full_resolution)
    except ImageRejected as exc:
        uids = _peek_uids(read.data, exc.reason)
        if isinstance(exc, OutOfDomain):
            row = _out_of_domain_row(read.entry.path, exc, version, uids)
        else:
            row = Row.rejected(read.entry.path, exc.reason, exc.detail, version, **uids)
        if row.study_instance_uid:
            accession, date = peek_study(read.data)
            row = replace(row, accession_number=accession, study_date=date)
        return row
    thumbnail = thumbnail_png(item.decoded.pixels, THUMBNAIL_SIDE)
    study = peek_study(read.data) if item.decoded.info.format == "dicom" else ("", "")
    # Keep the model input and the metadata only: a chunk of decoded images need not stay in memory.
    item.decoded = replace(item.decoded, pixels=np.zeros((0, 0), np.float32))
    return read.digest, item, study, thumbnail


def _scored_row(path: str, version: str, threshold: float, score: float, uids: dict[str, str]) -> Row:
    return Row(
        path,
        Status.SCORED.value,
        version,
        score=score,
        is_anomalous=bool(score >= threshold),
        threshold=threshold,
        study_instance_uid=uids.get("study_instance_uid", ""),
        series_instance_uid=uids.get("series_instance_uid", ""),
        sop_instance_uid=uids.get("sop_instance_uid", ""),
    )


def _out_of_domain_row(path: str, exc: OutOfDomain, version: str, uids: dict[str, str]) -> Row:
    """No score, no label: the gate's reasons (and the warnings gathered until then)."""
    row = Row.rejected(path, exc.reason, exc.detail, version, **uids)
    return replace(row, domain_reasons=tuple(exc.reasons), warnings=tuple(exc.warnings))


def _uids(item: Prepared) -> dict[str, str]:
    info = item.decoded.info
    return {
        "study_instance_uid": info.study_instance_uid or "",
        "series_instance_uid": info.series_instance_uid or "",
        "sop_instance_uid": info.sop_instance_uid or "",
    }


def _peek_uids(data: bytes, reason: str) -> dict[str, str]:
    """The UIDs of a refused DICOM (so a lateral view still counts in its study), when readable."""
    values = None if reason == Reason.UNSUPPORTED_FORMAT else peek_uids(data)
    if values is None:
        return {}
    return dict(zip(("study_instance_uid", "series_instance_uid", "sop_instance_uid"), values, strict=True))
