"""``squid.plan_job``: walk the submitted folder (or extract the uploaded zip) and send its chunks."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from celery import Task

from model.runtime import SquidRuntime
from service.jobs.archive import ArchiveError, Skipped, extract_archive, remove_upload
from service.jobs.celery_app import CHUNK_TASK, PLAN_TASK, app
from service.jobs.chunking import make_chunks
from service.jobs.heartbeat import run_leased
from service.jobs.results import ResultStore
from service.jobs.scoring import model_namespace
from service.jobs.state import PLAN_ATTEMPT, QUEUED, RUNNING, now_iso
from service.jobs.task_wrapper import run_tracked
from service.jobs.tasks.common import fail_job, guard_storage, send_finalize
from service.jobs.walker import FileEntry, is_inside, walk
from service.jobs.worker_model import runtime
from service.jobs.worker_redis import job_state
from service.settings import Settings, get_settings

log = logging.getLogger("service.jobs.tasks")


@app.task(name=PLAN_TASK, bind=True)
def plan_job(self: Task, job_id: str, enqueued_at: float | None = None) -> None:
    def leased() -> str:
        return run_leased(job_state(), get_settings(), job_id, "plan", self, lambda: _plan(job_id))

    run_tracked("plan", f"planning job {job_id}", guard_storage(self, job_id, "plan", leased), enqueued_at)


def _plan(job_id: str) -> str:
    """Write the job's totals and model, then send its chunks; safe to run again after a crash.

    A plan sent again keeps the model the first one recorded and skips the chunks it already sent
    (``chunks_sent``, written after each send): at most the one chunk sent as the worker died goes
    out twice, and a chunk's rows and counts are written once however often it is delivered.
    """
    state = job_state()
    job = state.get(job_id)
    if job is None or job["state"] not in (QUEUED, RUNNING):
        return "dropped"
    if job.get("planned") == "1":
        return "duplicate"
    cfg = get_settings()
    attempts = state.attempt(job_id, PLAN_ATTEMPT)
    if attempts > cfg.max_deliveries:  # it raised every time: end the job instead of looping
        detail = f"planning failed {attempts - 1} times (see the worker log)"
        fail_job(job_id, job, "planning_failed", detail)
        return "failed"
    store = ResultStore(Path(job["job_dir"]))
    started_at = job.get("started_at") or now_iso()
    if state.transition(job_id, (QUEUED, RUNNING), {"state": RUNNING, "started_at": started_at}) != 1:
        return "dropped"
    if store.read_manifest() is None:
        skipped: list[Skipped] = []
        root = _prepare_root(job_id, job, cfg, skipped)
        if root is None:
            return "failed"
        chunk_size = int(job.get("chunk_size") or cfg.chunk_size)  # the submitter's setting wins
        entries = walk(root) + [FileEntry(name, preset=reason, detail=text) for name, reason, text in skipped]
        chunks = make_chunks(entries, chunk_size)
        store.write_manifest(root, chunks, {"job_id": job_id, "chunk_size": chunk_size})
    manifest = store.read_manifest() or {}
    chunks = store.manifest_chunks()
    fields = {
        "total": sum(len(chunk) for chunk in chunks),
        "chunks": len(chunks),
        "root": manifest.get("root", job.get("root", "")),
        **_model_fields(job, runtime()),
    }
    if state.transition(job_id, (RUNNING,), fields) != 1:
        return "dropped"
    done, sent = state.chunk_indices(job_id), int(job.get("chunks_sent") or 0)
    for index, chunk in enumerate(chunks):
        if index >= sent and index not in done:
            _send_chunk(job_id, index, chunk, fields["root"], job["job_dir"])
            state.transition(job_id, (RUNNING,), {"chunks_sent": index + 1})
    state.transition(job_id, (RUNNING,), {"planned": "1"})
    if not chunks:
        send_finalize(job_id)
    log.info("job %s planned: %d files in %d chunks", job_id, fields["total"], len(chunks))
    return "succeeded"


def _model_fields(job: dict[str, str], rt: SquidRuntime) -> dict[str, str | float]:
    """The job's model: the one a first, interrupted plan recorded, else this worker's.

    A plan sent again (its worker died after writing the totals) runs on whichever worker takes it;
    taking that worker's model would mix two models' rows in one job. Its chunks then go to workers
    serving the recorded model, or end as ``model_mismatch`` rows.
    """
    if job.get("model_namespace"):
        return {name: job.get(name, "") for name in ("model_version", "model_namespace", "threshold")}
    return {
        "model_version": rt.metadata.model_version,
        "model_namespace": model_namespace(rt),
        "threshold": rt.threshold,
    }


def _prepare_root(job_id: str, job: dict[str, str], cfg: Settings, skipped: list[Skipped]) -> Path | None:
    """The tree to walk: the submitted folder (inside the import root) or the extracted upload.

    Members of the upload the file system cannot hold are appended to ``skipped``.
    """
    if job.get("source") == "zip":
        job_dir = Path(job["job_dir"])
        target = job_dir / "input"

        def cancelled() -> bool:
            live = job_state().get(job_id)
            return live is None or live.get("state") != RUNNING

        try:
            extract_archive(
                job_dir / "upload.zip",
                target,
                int(cfg.max_zip_extract_mb * (1 << 20)),
                skipped=skipped,
                should_stop=cancelled,
            )
        except ArchiveError as exc:
            if exc.reason == "cancelled":
                remove_upload(job_dir)
            else:
                fail_job(job_id, job, exc.reason, exc.detail)
            return None
        (Path(job["job_dir"]) / "upload.zip").unlink(missing_ok=True)
        return target.resolve()
    root = Path(job["root"]).resolve()
    if job.get("check_import_root") == "1":
        allowed = cfg.import_root.resolve() if cfg.import_root else None
        if allowed is None or not is_inside(allowed, root):
            fail_job(job_id, job, "path_forbidden", "the folder is outside this worker's import root")
            return None
    if not root.is_dir():
        fail_job(job_id, job, "path_not_found", "the folder does not exist on this worker")
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
    app.send_task(CHUNK_TASK, args=[payload], queue=get_settings().queue)
