"""``squid.finalize_job``: publish the result files once every chunk is recorded, end the job."""

from __future__ import annotations

import logging
from pathlib import Path

from celery import Task

from service.jobs import dicom_outputs
from service.jobs.celery_app import FINALIZE_TASK, app
from service.jobs.heartbeat import run_leased
from service.jobs.results import ResultStore
from service.jobs.state import RUNNING, SUCCEEDED
from service.jobs.task_wrapper import run_tracked
from service.jobs.tasks.common import end_job, fail_job, guard_storage
from service.jobs.worker_redis import job_state
from service.settings import get_settings
from service.worklist.ingest import sync_job_index

log = logging.getLogger("service.jobs.tasks")


@app.task(name=FINALIZE_TASK, bind=True)
def finalize_job(self: Task, job_id: str) -> None:
    def leased() -> str:
        return run_leased(job_state(), get_settings(), job_id, "finalize", self, lambda: _finalize(job_id))

    run_tracked("finalize", f"finalizing job {job_id}", guard_storage(self, job_id, "finalize", leased))


def _finalize(job_id: str) -> str:
    job = job_state().get(job_id)
    if job is None or job["state"] != RUNNING:
        return "dropped"
    store = ResultStore(Path(job["job_dir"]))
    expected = [entry.path for chunk in store.manifest_chunks() for entry in chunk]
    published = store.publish(expected)
    if published.missing:
        detail = f"{len(published.missing)} of {len(expected)} files have no result row"
        fail_job(job_id, job, "missing_results", detail)
        return "failed"
    if job.get("dicom_out") == "1":
        dicom_outputs.publish(store.job_dir)
    try:
        sync_job_index(store.job_dir, finished=True)  # the worklist's first view of it is instant
    except Exception as exc:  # the API builds it on the first view instead
        log.warning("job %s: worklist index not built (%s)", job_id, type(exc).__name__)
    if end_job(job_id, job, SUCCEEDED):
        log.info("job %s succeeded: %d rows, %d studies", job_id, published.rows, published.studies)
    return "succeeded"
