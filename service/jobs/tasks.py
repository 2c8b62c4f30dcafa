"""The three Celery tasks of a job: plan (walk + chunk), score a chunk, finalize (publish results).

The model is loaded once per pool process in ``worker_process_init`` (after the fork: an
onnxruntime session, or a CUDA context, must never be created in the parent), or lazily on the
first task for the solo and threads pools. Every task is safe to run twice: chunk rows go to a
file named by the chunk, chunk completion is a hash field, and finalizing rewrites the same files.
Anything unexpected (Redis gone, a bug) rejects the message back to the queue; the delivery count
per chunk turns a poison pill into failed rows instead of an endless loop.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject
from celery.signals import worker_process_init, worker_process_shutdown, worker_ready

from model.runtime import SquidRuntime
from service import metrics as score_metrics
from service.jobs import dicom_outputs, heartbeat, metrics
from service.jobs.archive import ArchiveError, extract_archive, remove_tree
from service.jobs.cache import NullCache, RedisScoreCache, ScoreCache
from service.jobs.celery_app import CHUNK_TASK, FINALIZE_TASK, PLAN_TASK, app
from service.jobs.chunking import make_chunks
from service.jobs.results import ResultStore
from service.jobs.rows import Reason, Row
from service.jobs.scoring import STAGES, ChunkOutcome, model_namespace, score_entries
from service.jobs.state import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    JobState,
    now_iso,
    read_record,
    write_record,
)
from service.jobs.walker import FileEntry, is_inside, walk
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)

_lock = threading.Lock()
_runtime: SquidRuntime | None = None
_state: tuple[int, JobState] | None = None


def settings() -> Settings:
    return get_settings()


def runtime() -> SquidRuntime:
    """This process's model (loaded on first use when no ``worker_process_init`` did it)."""
    global _runtime
    with _lock:
        if _runtime is None:
            cfg = settings()
            _runtime = SquidRuntime(
                cfg.model_path,
                providers=cfg.providers,
                intra_op_threads=cfg.intra_op_threads,
                threshold=cfg.threshold,
            )
            _runtime.warmup()
            metrics.WORKER_INFO.labels(_runtime.metadata.model_version, ",".join(_runtime.providers)).set(1)
            score_metrics.observe_model(_runtime.metadata.model_version)
            log.info("worker process %d loaded model %s", os.getpid(), _runtime.metadata.model_version)
        return _runtime


def job_state() -> JobState:
    """A Redis client per process (created after the fork)."""
    global _state
    with _lock:
        if _state is None or _state[0] != os.getpid():
            cfg = settings()
            client = redis.Redis.from_url(
                cfg.broker_url or "redis://127.0.0.1:6379/0",
                socket_connect_timeout=5,
                socket_timeout=30,
                health_check_interval=10,
            )
            _state = (os.getpid(), JobState(client, cfg.key_prefix))
        return _state[1]


@worker_process_init.connect
def _load_model_in_pool_process(**_: Any) -> None:
    runtime()


@worker_process_shutdown.connect
def _pool_process_exit(pid: int | None = None, **_: Any) -> None:
    metrics.process_exited(pid or os.getpid())


@worker_ready.connect
def _start_metrics_server(**_: Any) -> None:
    cfg = settings()
    if cfg.worker_metrics_port:
        backlog = metrics.BacklogCollector(job_state().client, cfg.queue, cfg.key_prefix)
        metrics.serve_metrics(cfg.worker_metrics_port, backlog)


def _ttl_s() -> int:
    return int(settings().job_ttl_hours * 3600)


def _store(job: dict[str, str]) -> ResultStore:
    return ResultStore(Path(job["job_dir"]))


def _fail_job(job_id: str, job: dict[str, str], reason: str, detail: str) -> None:
    if job_state().finish(job_id, FAILED, _ttl_s(), (reason, detail)):
        metrics.JOBS_FINISHED.labels(FAILED).inc()
        _write_final_record(job_id, Path(job["job_dir"]))
        _remove_upload(job)
    log.warning("job %s failed: %s", job_id, reason)


def _remove_upload(job: dict[str, str]) -> None:
    """A zip job's extracted files are only needed while it runs (rows keep their paths)."""
    if job.get("source") == "zip":
        remove_tree(Path(job["job_dir"]) / "input")


def _write_final_record(job_id: str, job_dir: Path) -> None:
    """Copy the final state and counts to ``job.json`` (what remains once Redis expired the job)."""
    state = job_state()
    live = state.get(job_id) or {}
    record = read_record(job_dir) or {"id": job_id}
    record.update({k: v for k, v in live.items() if k not in ("root", "job_dir")})
    record["progress"] = state.progress(job_id)
    write_record(job_dir, record)


@app.task(name=PLAN_TASK, bind=True)
def plan_job(self: Task, job_id: str, enqueued_at: float | None = None) -> None:
    if enqueued_at is not None:
        metrics.QUEUE_WAIT.labels("plan").observe(max(0.0, time.time() - enqueued_at))
    started = time.perf_counter()
    try:
        outcome = heartbeat.run_leased(job_state(), settings(), job_id, "plan", self, lambda: _plan(job_id))
    except Reject:
        metrics.TASKS.labels("plan", "requeued").inc()
        raise
    except Exception as exc:
        log.exception("planning job %s failed; requeued", job_id)
        metrics.TASKS.labels("plan", "requeued").inc()
        raise Reject(type(exc).__name__, requeue=True) from None
    metrics.TASKS.labels("plan", outcome).inc()
    metrics.TASK_TIME.labels("plan").observe(time.perf_counter() - started)


def _plan(job_id: str) -> str:
    state = job_state()
    job = state.get(job_id)
    if job is None or job["state"] not in (QUEUED, RUNNING):
        return "dropped"
    if job.get("planned") == "1":
        return "duplicate"
    cfg = settings()
    rt = runtime()
    store = _store(job)
    started_at = job.get("started_at") or now_iso()
    if state.transition(job_id, (QUEUED, RUNNING), {"state": RUNNING, "started_at": started_at}) != 1:
        return "dropped"
    if store.read_manifest() is None:
        root = _prepare_root(job_id, job, cfg)
        if root is None:
            return "failed"
        chunk_size = int(job.get("chunk_size") or cfg.chunk_size)  # the submitter's setting wins
        chunks = make_chunks(walk(root), chunk_size)
        store.write_manifest(root, chunks, {"job_id": job_id, "chunk_size": chunk_size})
    manifest = store.read_manifest() or {}
    chunks = store.manifest_chunks()
    fields = {
        "total": sum(len(chunk) for chunk in chunks),
        "chunks": len(chunks),
        "root": manifest.get("root", job.get("root", "")),
        "model_version": rt.metadata.model_version,
        "model_namespace": model_namespace(rt),
        "threshold": rt.threshold,
    }
    if state.transition(job_id, (RUNNING,), fields) != 1:
        return "dropped"
    done = state.chunk_indices(job_id)
    for index, chunk in enumerate(chunks):
        if index not in done:
            _send_chunk(job_id, index, chunk, fields["root"], job["job_dir"])
    state.transition(job_id, (RUNNING,), {"planned": "1"})
    if not chunks:
        app.send_task(FINALIZE_TASK, args=[job_id], queue=cfg.queue)
    log.info("job %s planned: %d files in %d chunks", job_id, fields["total"], len(chunks))
    return "succeeded"


def _prepare_root(job_id: str, job: dict[str, str], cfg: Settings) -> Path | None:
    """The tree to walk: the submitted folder (inside the import root) or the extracted upload."""
    if job.get("source") == "zip":
        target = Path(job["job_dir"]) / "input"
        try:
            extract_archive(
                Path(job["job_dir"]) / "upload.zip", target, int(cfg.max_zip_extract_mb * (1 << 20))
            )
        except ArchiveError as exc:
            _fail_job(job_id, job, exc.reason, exc.detail)
            return None
        (Path(job["job_dir"]) / "upload.zip").unlink(missing_ok=True)
        return target.resolve()
    root = Path(job["root"]).resolve()
    if job.get("check_import_root") == "1":
        allowed = cfg.import_root.resolve() if cfg.import_root else None
        if allowed is None or not is_inside(allowed, root):
            _fail_job(job_id, job, "path_forbidden", "the folder is outside this worker's import root")
            return None
    if not root.is_dir():
        _fail_job(job_id, job, "path_not_found", "the folder does not exist on this worker")
        return None
    return root


def _send_chunk(job_id: str, index: int, chunk: list[FileEntry], root: str, job_dir: str) -> None:
    payload = {
        "job_id": job_id,
        "index": index,
        "root": root,
        "job_dir": job_dir,
        "files": [entry.to_wire() for entry in chunk],
        "enqueued_at": time.time(),
    }
    app.send_task(CHUNK_TASK, args=[payload], queue=settings().queue)


@app.task(name=CHUNK_TASK, bind=True, max_retries=None)
def score_chunk(self: Task, payload: dict[str, Any]) -> None:
    metrics.QUEUE_WAIT.labels("chunk").observe(max(0.0, time.time() - float(payload["enqueued_at"])))
    started = time.perf_counter()
    try:
        unit = heartbeat.chunk_unit(int(payload["index"]))
        outcome = heartbeat.run_leased(
            job_state(), settings(), str(payload["job_id"]), unit, self, lambda: _score_chunk(self, payload)
        )
    except Reject:
        metrics.TASKS.labels("chunk", "requeued").inc()
        raise
    except Exception as exc:
        log.exception("chunk %s of job %s failed; requeued", payload.get("index"), payload.get("job_id"))
        metrics.TASKS.labels("chunk", "requeued").inc()
        raise Reject(type(exc).__name__, requeue=True) from None
    metrics.TASKS.labels("chunk", outcome).inc()
    metrics.TASK_TIME.labels("chunk").observe(time.perf_counter() - started)


def _score_chunk(task: Task, payload: dict[str, Any]) -> str:
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
    cfg = settings()
    store = ResultStore(Path(payload["job_dir"]))
    entries = [FileEntry.from_wire(item) for item in payload["files"]]
    attempts = state.attempt(job_id, index)
    counts: dict[str, Any]
    if store.has_chunk(index):  # written by a delivery that died before recording it
        counts = _count(store.read_chunk(index))
    elif attempts > cfg.max_deliveries:
        detail = f"delivered {attempts - 1} times without finishing (worker killed or time limit)"
        version = job.get("model_version", "")
        rows = [Row.rejected(e.path, Reason.WORKER_LOST, detail, version) for e in entries]
        store.write_chunk(index, rows)
        counts = _count(rows)
    else:
        rt = runtime()
        if model_namespace(rt) != job.get("model_namespace"):
            return _model_mismatch(task, job, entries, store, index, attempts, cfg)
        dicom = job.get("dicom_out") == "1"  # maps are not cached: DICOM results need a fresh score
        cache: ScoreCache = (
            NullCache() if dicom else RedisScoreCache(state.client, cfg.key_prefix, model_namespace(rt))
        )
        outcome = score_entries(rt, Path(payload["root"]), entries, cache=cache, max_pixels=cfg.max_pixels)
        write_started = time.perf_counter()
        if dicom:
            dicom_outputs.write_chunk(
                rt, Path(payload["root"]), outcome.results, store.job_dir, index, cfg.max_pixels
            )
        store.write_chunk(index, outcome.rows)
        outcome.timing_ms["write"] = (time.perf_counter() - write_started) * 1e3
        _observe(outcome)
        counts = {**outcome.summary(), "stage_ms": {k: round(v, 3) for k, v in outcome.timing_ms.items()}}
    finished = state.record_chunk(job_id, index, counts)
    if finished < 0:
        return "dropped"
    if finished >= int(job.get("chunks") or 0):
        app.send_task(FINALIZE_TASK, args=[job_id], queue=cfg.queue)
    return "succeeded"


def _model_mismatch(
    task: Task,
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
    finished = job_state().record_chunk(job["id"], index, _count(rows))
    if finished >= int(job.get("chunks") or 0):
        app.send_task(FINALIZE_TASK, args=[job["id"]], queue=cfg.queue)
    return "failed"


def _count(rows: list[Row]) -> dict[str, Any]:
    counts = dict.fromkeys(("scored", "resumed", "skipped", "failed"), 0)
    for row in rows:
        counts[row.status] += 1
    return counts


def _observe(outcome: ChunkOutcome) -> None:
    for (status, reason), count in outcome.reasons.items():
        metrics.FILES.labels(status, reason).inc(count)
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


@app.task(name=FINALIZE_TASK, bind=True)
def finalize_job(self: Task, job_id: str) -> None:
    started = time.perf_counter()
    try:
        outcome = heartbeat.run_leased(
            job_state(), settings(), job_id, "finalize", self, lambda: _finalize(job_id)
        )
    except Exception as exc:
        log.exception("finalizing job %s failed; requeued", job_id)
        metrics.TASKS.labels("finalize", "requeued").inc()
        raise Reject(type(exc).__name__, requeue=True) from None
    metrics.TASKS.labels("finalize", outcome).inc()
    metrics.TASK_TIME.labels("finalize").observe(time.perf_counter() - started)


def _finalize(job_id: str) -> str:
    state = job_state()
    job = state.get(job_id)
    if job is None or job["state"] != RUNNING:
        return "dropped"
    store = _store(job)
    expected = [entry.path for chunk in store.manifest_chunks() for entry in chunk]
    published = store.publish(expected)
    if published.missing:
        detail = f"{len(published.missing)} of {len(expected)} files have no result row"
        _fail_job(job_id, job, "missing_results", detail)
        return "failed"
    if job.get("dicom_out") == "1":
        dicom_outputs.publish(store.job_dir)
    if state.finish(job_id, SUCCEEDED, _ttl_s()):
        metrics.JOBS_FINISHED.labels(SUCCEEDED).inc()
        _write_final_record(job_id, Path(job["job_dir"]))
        _remove_upload(job)
        log.info("job %s succeeded: %d rows, %d studies", job_id, published.rows, published.studies)
    return "succeeded"
