"""Score one chunk of files: read, decode and preprocess each, run one batched inference, make rows.

The same function runs inside Celery workers and in-process (``squid batch``), on the shared scoring
path of :mod:`model.steps`, so batch and HTTP scores agree and both batch paths write identical
result files. A file can only ever fail itself: every per-file error becomes a row.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from model.imaging import ImageRejected, OutOfDomain
from model.imaging.headers import peek_uids
from model.runtime import ScoreResult, SquidRuntime
from model.steps import Prepared, infer, prepare, verdict
from service.jobs.cache import ScoreCache
from service.jobs.rows import Reason, Row, Status
from service.jobs.state import COUNT_KEYS
from service.jobs.walker import FileEntry, resolve_inside

log = logging.getLogger(__name__)

STAGES = ("read", "decode", "preprocess", "inference", "write")
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

    def add_row(self, row: Row) -> None:
        """A row decided without scoring (a file not tried again); it must not be a scored row."""
        self.rows.append(row)
        self.counts[row.status] += 1
        self.reasons[(row.status, row.reason)] += 1

    def to_json(self) -> dict[str, Any]:
        """Everything but ``results`` (anomaly maps stay in memory), for a chunk scored in steps."""
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


def score_entries(
    runtime: SquidRuntime,
    root: Path,
    entries: list[FileEntry],
    *,
    cache: ScoreCache,
    max_pixels: int,
    with_map: bool = False,
) -> ChunkOutcome:
    """Rows for ``entries`` (paths relative to ``root``), scoring what the cache does not know;
    ``with_map`` keeps each fresh result's anomaly map (DICOM outputs draw it)."""
    version = runtime.metadata.model_version
    rows: list[Row | None] = [None] * len(entries)
    outcome = ChunkOutcome(rows=[])
    pending: list[_Pending] = []
    for index, entry in enumerate(entries):
        result = _prepare_one(runtime, root, entry, cache, max_pixels, outcome)
        if isinstance(result, Row):
            rows[index] = result
        else:
            digest, item = result
            pending.append(_Pending(index, entry, digest, item))
    if pending:
        try:
            results, inference_ms = infer(runtime, [p.item for p in pending], with_map)
        except Exception as exc:  # the model failing on a batch fails its files, not the job
            log.exception("inference failed for a batch of %d files", len(pending))
            for p in pending:
                rows[p.index] = Row.rejected(
                    p.entry.path, Reason.INFERENCE_ERROR, type(exc).__name__, version, **_uids(p.item)
                )
        else:
            outcome.timing_ms["inference"] += inference_ms
            outcome.inference_batch = len(pending)
            fresh: dict[str, dict[str, object]] = {}
            for p, res in zip(pending, results, strict=True):
                uids = _uids(p.item)
                try:
                    verdict(runtime.gate, p.item, res)
                except OutOfDomain as exc:
                    rows[p.index] = _out_of_domain_row(p.entry.path, exc, version, uids)
                    continue
                warnings = list(p.item.decoded.warnings)
                rows[p.index] = _scored_row(
                    p.entry.path, version, runtime.threshold, res.score, uids, warnings
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
            for reason in row.domain_reasons or [row.reason]:
                outcome.reasons[(row.status, reason)] += 1
    return outcome


def _prepare_one(
    runtime: SquidRuntime,
    root: Path,
    entry: FileEntry,
    cache: ScoreCache,
    max_pixels: int,
    outcome: ChunkOutcome,
) -> Row | tuple[str, Prepared]:
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
        warnings = [str(code) for code in cached.get("warnings", [])]
        return _scored_row(entry.path, version, runtime.threshold, float(cached["score"]), uids, warnings)
    try:
        item = prepare(data, runtime.preprocessing, max_pixels, runtime.gate)
    except OutOfDomain as exc:
        return _out_of_domain_row(entry.path, exc, version, _peek_uids(data, exc.reason))
    except ImageRejected as exc:
        return Row.rejected(entry.path, exc.reason, exc.detail, version, **_peek_uids(data, exc.reason))
    outcome.timing_ms["decode"] += item.timing_ms.get("decode", 0.0)
    outcome.timing_ms["preprocess"] += item.timing_ms.get("preprocess", 0.0)
    # Keep the model input and the metadata only: a chunk of full-size radiographs would not fit.
    item.decoded = replace(item.decoded, pixels=np.zeros((0, 0), np.float32))
    return digest, item


def _scored_row(
    path: str, version: str, threshold: float, score: float, uids: dict[str, str], warnings: list[str]
) -> Row:
    row = Row.rejected(path, "", "", version, **uids)  # the UIDs, then what a scored row has
    return replace(
        row,
        status=Status.SCORED.value,
        score=score,
        is_anomalous=bool(score >= threshold),
        threshold=threshold,
        warnings=warnings,
    )


def _out_of_domain_row(path: str, exc: OutOfDomain, version: str, uids: dict[str, str]) -> Row:
    """No score, no label: the gate's reasons (and the warnings gathered until then)."""
    row = Row.rejected(path, exc.reason, exc.detail, version, **uids)
    return replace(row, domain_reasons=exc.reasons, warnings=exc.warnings)


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
