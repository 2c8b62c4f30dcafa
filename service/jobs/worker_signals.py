"""Celery signal handlers of a worker: load the model per pool process, serve worker metrics."""

from __future__ import annotations

import os
from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown, worker_ready

from service.jobs import metrics
from service.jobs.worker_model import runtime
from service.jobs.worker_redis import job_state
from service.settings import get_settings


@worker_process_init.connect
def _load_model_in_pool_process(**_: Any) -> None:
    runtime()


@worker_process_shutdown.connect
def _pool_process_exit(pid: int | None = None, **_: Any) -> None:
    metrics.process_exited(pid or os.getpid())


@worker_ready.connect
def _start_metrics_server(**_: Any) -> None:
    cfg = get_settings()
    if cfg.worker_metrics_port:
        backlog = metrics.BacklogCollector(job_state(), cfg.queue)
        metrics.serve_metrics(cfg.worker_metrics_port, backlog)
