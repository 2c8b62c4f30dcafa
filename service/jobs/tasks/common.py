"""What the job tasks share: ending a job (state, ``job.json``, upload clean-up), chunk counts, and
backing off when the results folder is full or cannot be written."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Task

from service.jobs import metrics
from service.jobs.archive import remove_upload
from service.jobs.celery_app import FINALIZE_TASK, app
from service.jobs.heartbeat import holder_of, new_token
from service.jobs.recovery import send_again
from service.jobs.rows import Row, Status
from service.jobs.state import ACTIVE_STATES, COUNT_KEYS, FAILED, now_iso
from service.jobs.storage import RESULTS_DISK_FULL, describe, storage_reason
from service.jobs.worker_redis import job_state
from service.settings import get_settings

log = logging.getLogger("service.jobs.tasks")


def ttl_s() -> int:
    return int(get_settings().job_ttl_hours * 3600)


def end_job(job_id: str, job: dict[str, str], state: str, error: tuple[str, str] | None = None) -> bool:
    """Move the job to its final ``state`` and drop a zip job's upload; False when it already ended."""
    job_dir = Path(job["job_dir"])
    changed = job_state().close(job_id, state, ttl_s(), job_dir, error)
    if changed:
        metrics.JOBS_FINISHED.labels(state).inc()
    if job.get("source") == "zip":
        remove_upload(job_dir)  # extracted files are only needed while it runs (rows keep their paths)
    return changed


def fail_job(job_id: str, job: dict[str, str], reason: str, detail: str) -> None:
    end_job(job_id, job, FAILED, (reason, detail))
    log.warning("job %s failed: %s", job_id, reason)


def send_finalize(job_id: str) -> None:
    app.send_task(FINALIZE_TASK, args=[job_id], queue=get_settings().queue)


def count(rows: list[Row]) -> dict[str, Any]:
    """A chunk's stored counts from its rows, with ``failures`` (failed rows by reason)."""
    counts: dict[str, Any] = dict.fromkeys(COUNT_KEYS, 0)
    failures: dict[str, int] = {}
    for row in rows:
        counts[row.status] += 1
        if row.status == Status.FAILED:
            failures[row.reason] = failures.get(row.reason, 0) + 1
    counts["failures"] = dict(sorted(failures.items()))
    return counts


def guard_storage(task: Task, job_id: str, unit: str, body: Callable[[], str]) -> Callable[[], str]:
    """``body``, unless the job is backing off from a full or unwritable results folder (the task
    is then sent again for when it ends, without doing any work), with such a failure handled by
    :func:`retry_storage`."""

    def guarded() -> str:
        wait = job_state().storage_retry_at(job_id) - time.time()
        if wait > 0:
            _send_again(task, wait)
            return "deferred"
        try:
            return body()
        except OSError as exc:
            reason = storage_reason(exc)
            if reason is None:
                raise
            return retry_storage(task, job_id, unit, exc, reason)

    return guarded


def retry_storage(task: Task, job_id: str, unit: str, exc: OSError, reason: str) -> str:
    """Hold the whole job for a back-off (``storage_backoff_s``, doubled after each failure), send
    the task again for when it ends, and fail the job with ``reason`` after ``storage_retries``.

    A full disk is not a lost worker nor the file's fault: the delivery is taken back from the
    unit's poison-pill count, and each failure is an event in the job's log (with ``retry_in_s``).
    Tasks of the job that start during the back-off wait for its end without doing any work, so
    the job tries once per back-off, not once per chunk.
    """
    cfg, state = get_settings(), job_state()
    job = state.get(job_id)
    if job is None or job.get("state") not in ACTIVE_STATES:
        return "dropped"
    if unit == "plan" or unit.startswith("chunk:"):
        state.unattempt(job_id, unit.removeprefix("chunk:"))
    failures = state.storage_failure(job_id)
    if failures < 0:  # the job expired meanwhile
        return "dropped"
    retry_in = cfg.storage_backoff_s * 2 ** (failures - 1) if failures <= cfg.storage_retries else None
    if retry_in is not None:
        state.hold_storage(job_id, time.time() + retry_in)
    what = describe(exc)
    event = {
        "at": now_iso(),
        "event": reason,
        "unit": unit,
        "worker": holder_of(new_token()),
        "detail": f"{what}; "
        + (f"retry {failures} of {cfg.storage_retries} in {retry_in:g} s" if retry_in else "the job fails"),
        "retry_in_s": retry_in,
    }
    state.record_event(job_id, event)
    if retry_in is None:
        fix = (
            "free space on the results volume (or grow it)"
            if reason == RESULTS_DISK_FULL
            else "make SQUID_RESULTS_DIR writable for the workers"
        )
        detail = f"the results folder could not be written ({what}): {fix}, then submit the job again"
        fail_job(job_id, job, reason, detail)
        return "failed"
    log.warning("job %s: %s could not write its results (%s); retried in %g s", job_id, unit, what, retry_in)
    _send_again(task, retry_in)
    return "retried"


def _send_again(task: Task, countdown: float) -> None:
    request = task.request
    send_again(str(task.name), list(request.args or ()), dict(request.kwargs or {}), countdown=countdown)
