"""What the job tasks share: ending a job (state, ``job.json``, upload clean-up) and chunk counts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from service.jobs import metrics
from service.jobs.archive import remove_upload
from service.jobs.celery_app import FINALIZE_TASK, app
from service.jobs.rows import Row
from service.jobs.state import COUNT_KEYS, FAILED
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
    counts = dict.fromkeys(COUNT_KEYS, 0)
    for row in rows:
        counts[row.status] += 1
    return counts
