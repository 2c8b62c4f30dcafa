"""``squid.score_chunk``: score one chunk of a job's files into its chunk file.

A chunk whose delivery was lost is scored again one file at a time, so a poison pill (a file that
kills its worker) ends as its own failed row instead of an endless loop or a failed chunk
(:mod:`service.jobs.isolation`); a worker serving another model leaves the chunk to one that does;
a full or unwritable results folder is retried with a back-off, then fails the job with its reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery import Task
from celery.exceptions import Reject

from model.runtime import SquidRuntime
from service import metrics as score_metrics
from service.jobs import dicom_outputs, metrics
from service.jobs.cache import NullCache, RedisScoreCache, ScoreCache
from service.jobs.celery_app import CHUNK_TASK, app
from service.jobs.heartbeat import chunk_unit, run_leased
from service.jobs.isolation import ChunkRuns, ChunkScoring
from service.jobs.isolation import score_chunk as score_chunk_files
from service.jobs.results import ResultStore
from service.jobs.rows import Reason, Row
from service.jobs.scoring import STAGES, ChunkOutcome, model_namespace
from service.jobs.state import CANCELLED, RUNNING
from service.jobs.task_wrapper import run_tracked
from service.jobs.tasks.common import count, guard_storage, send_finalize
from service.jobs.walker import FileEntry
from service.jobs.worker_model import runtime
from service.jobs.worker_redis import job_state
from service.settings import Settings, get_settings
from service.worklist.views import write_views

log = logging.getLogger("service.jobs.tasks")


@app.task(name=CHUNK_TASK, bind=True)
def score_chunk(self: Task, payload: dict[str, Any]) -> None:
    what = f"chunk {payload.get('index')} of job {payload.get('job_id')}"
    job_id, unit = str(payload["job_id"]), chunk_unit(int(payload["index"]))

    def leased() -> str:
        body = lambda: _score_chunk(payload)  # noqa: E731
        return run_leased(job_state(), get_settings(), job_id, unit, self, body)

    run_tracked("chunk", what, guard_storage(self, job_id, unit, leased), float(payload["enqueued_at"]))


def _score_chunk(payload: dict[str, Any]) -> str:
    job_id, index = str(payload["job_id"]), int(payload["index"])
    state = job_state()
    job = state.get(job_id)
    if job is None:
        log.warning(
            "chunk %d of job %s dropped: the job is unknown (expired or broker state lost)", index, job_id
        )
        return "dropped"
    if job["state"] != RUNNING:
        return "cancelled" if job["state"] == CANCELLED else "dropped"
    cfg = get_settings()
    store = ResultStore(Path(payload["job_dir"]))
    entries = [FileEntry.from_wire(item) for item in payload["files"]]
    attempts = state.attempt(job_id, index)
    runs = ChunkRuns(state, job_id)
    counts: dict[str, Any]
    if store.has_chunk(index):  # written by a delivery that died before recording it
        counts = count(store.read_chunk(index))
    else:
        rt = runtime()
        if model_namespace(rt) != job.get("model_namespace"):
            return _model_mismatch(job, entries, store, index, attempts, cfg)
        counts = _score_and_write(rt, job, runs, store, Path(payload["root"]), index, entries, cfg)
    finished = state.record_chunk(job_id, index, counts)
    runs.drop(index)
    if finished < 0:
        return "dropped"
    if finished >= int(job.get("chunks") or 0):
        send_finalize(job_id)
    return "succeeded"


def _score_and_write(
    rt: SquidRuntime,
    job: dict[str, str],
    runs: ChunkRuns,
    store: ResultStore,
    root: Path,
    index: int,
    entries: list[FileEntry],
    cfg: Settings,
) -> dict[str, Any]:
    """Score the chunk (one file at a time after a lost delivery), write its rows; its counts."""
    dicom = job.get("dicom_out") == "1"  # maps are not cached: DICOM results need a fresh score
    cache: ScoreCache = (
        NullCache() if dicom else RedisScoreCache(job_state().client, cfg.key_prefix, model_namespace(rt))
    )

    def make_records(outcome: ChunkOutcome) -> list[dict[str, Any]]:
        with _timed(outcome, "write"):
            return dicom_outputs.records(rt, root, outcome.results, store.job_dir, cfg.max_pixels)

    def write(outcome: ChunkOutcome, records: list[dict[str, Any]] | None) -> None:
        with _timed(outcome, "write"):
            if records is not None:
                dicom_outputs.write_chunk(store.job_dir, index, records)
            if job.get("views") == "1":  # the node's jobs: its sources go once scored
                write_views(rt, root, outcome.rows, store.job_dir, cfg.max_pixels)
            store.write_thumbnails(index, outcome.thumbnails)
            store.write_chunk(index, outcome.rows)

    how = ChunkScoring(
        rt,
        root,
        cache,
        cfg.max_pixels,
        cfg.max_deliveries,
        cfg.task_time_limit_s,
        make_records if dicom else None,
        decode_threads=cfg.decode_threads,
        full_resolution=cfg.decode_full_resolution,
    )
    outcome = score_chunk_files(runs, index, entries, how, write)
    _observe(outcome)
    return {
        **outcome.summary(),
        "failures": outcome.failures(),
        "stage_ms": {k: round(v, 3) for k, v in outcome.timing_ms.items()},
    }


@contextmanager
def _timed(outcome: ChunkOutcome, stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        outcome.timing_ms[stage] = outcome.timing_ms.get(stage, 0.0) + (time.perf_counter() - started) * 1e3


def _model_mismatch(
    job: dict[str, str],
    entries: list[FileEntry],
    store: ResultStore,
    index: int,
    attempts: int,
    cfg: Settings,
) -> str:
    """A worker serving another model must not score this job: leave the chunk to one that does."""
    if attempts < cfg.max_deliveries:
        raise Reject("model mismatch", requeue=True)
    detail = f"no worker with model {job.get('model_version', '')!r} took the chunk"
    rows = [
        Row.rejected(e.path, Reason.MODEL_MISMATCH, detail, job.get("model_version", "")) for e in entries
    ]
    store.write_chunk(index, rows)
    finished = job_state().record_chunk(job["id"], index, count(rows))
    if finished >= int(job.get("chunks") or 0):
        send_finalize(job["id"])
    return "failed"


def _observe(outcome: ChunkOutcome) -> None:
    for (status, reason), number in outcome.reasons.items():
        metrics.FILES.labels(status, reason).inc(number)
    for name in ("scored", "resumed"):
        if outcome.counts.get(name):
            metrics.FILES.labels(name, "none").inc(outcome.counts[name])
    if outcome.inference_batch:
        metrics.INFERENCE.observe(outcome.timing_ms["inference"] / 1e3)
        metrics.BATCH_SIZE.observe(outcome.inference_batch)
    for row in outcome.rows:
        if row.status == "scored" and row.score is not None:
            score_metrics.observe_score(row.model_version, row.score, bool(row.is_anomalous))
    files = max(1, len(outcome.rows))
    for stage in STAGES:
        if outcome.timing_ms.get(stage):
            metrics.STAGE.labels(stage).observe(outcome.timing_ms[stage] / 1e3 / files)
