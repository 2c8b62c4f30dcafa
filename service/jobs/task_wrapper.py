"""The bookkeeping every job task shares: queue wait, duration, outcome metrics, requeue on surprise.

A task body returns its outcome word (``succeeded``, ``dropped``, ...). Anything unexpected (Redis
gone, a bug) rejects the message back to the queue; each task bounds its own redeliveries (chunks and
planning count deliveries in Redis), so a poison pill ends as failed rows or a failed job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from celery.exceptions import Reject

from service.jobs import metrics

log = logging.getLogger("service.jobs.tasks")


def run_tracked(kind: str, what: str, body: Callable[[], str], enqueued_at: float | None = None) -> None:
    """Run ``body`` as the ``kind`` task (``plan``, ``chunk``, ``finalize``); ``what`` names it in logs."""
    if enqueued_at is not None:
        metrics.QUEUE_WAIT.labels(kind).observe(max(0.0, time.time() - enqueued_at))
    started = time.perf_counter()
    try:
        outcome = body()
    except Reject:
        metrics.TASKS.labels(kind, "requeued").inc()
        raise
    except Exception as exc:
        log.exception("%s failed; requeued", what)
        metrics.TASKS.labels(kind, "requeued").inc()
        raise Reject(type(exc).__name__, requeue=True) from None
    metrics.TASKS.labels(kind, outcome).inc()
    metrics.TASK_TIME.labels(kind).observe(time.perf_counter() - started)
