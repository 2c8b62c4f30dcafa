"""Celery configuration of the batch jobs (Redis broker, no result backend); the app itself is in
:mod:`service.jobs.celery_app`, so submitting (the API, ``squid batch``) builds its own producer
without importing the worker's tasks.

Delivery guarantees come from the broker settings, exactly-once rows from idempotent writes:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a task is acknowledged after it finished, and
  requeued when its process dies (SIGKILL, OOM) or it hits the hard time limit.
* ``worker_prefetch_multiplier=1``: a process holds one task at a time; no chunk waits behind a slow
  one in a busy process's buffer.
* Redis ``visibility_timeout``: a task delivered to a worker that vanished entirely is redelivered
  after it; it must exceed the longest task, so the settings require the hard time limit to be lower.
  The restore sweep runs every ``visibility_timeout / 10`` seconds (at most 10 s). It is the last
  resort: a running task holds a heartbeat lease, and the workers' reaper sends the task of a lost
  worker again within a minute (:mod:`service.jobs.heartbeat`, :mod:`service.jobs.recovery`).
* ``worker_max_memory_per_child``: a pool process whose resident memory grew past
  ``SQUID_WORKER_MAX_MEMORY_MB`` (decoding full-size radiographs fragments the heap) is replaced
  once its task is done; the new one loads the model in ``worker_process_init``.
* ``worker_cancel_long_running_tasks_on_connection_loss``: a task whose broker connection dropped
  cannot be acknowledged any more; it is stopped and redelivered instead of finishing unseen.

Task state lives in our own Redis keys (:mod:`service.jobs.state`), so results are ignored.
"""

from __future__ import annotations

from celery import Celery

from service.settings import Settings

PLAN_TASK = "squid.plan_job"
CHUNK_TASK = "squid.score_chunk"
FINALIZE_TASK = "squid.finalize_job"
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"


def celery_config(settings: Settings) -> dict[str, object]:
    vt = settings.visibility_timeout_s
    return {
        "broker_url": settings.broker_url or DEFAULT_BROKER,
        "broker_transport_options": {
            "visibility_timeout": vt,
            "unacked_restore_interval": max(1, min(10, vt // 10)),
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": 5,
            "socket_timeout": 30,
            "health_check_interval": 10,
        },
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "task_default_queue": settings.queue,
        "task_routes": {"squid.*": {"queue": settings.queue}},
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_timeout": False,
        "task_time_limit": settings.task_time_limit_s,
        "worker_prefetch_multiplier": 1,
        "worker_max_memory_per_child": settings.worker_max_memory_mb * 1024,  # KiB
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_send_task_events": False,
        "worker_hijack_root_logger": False,
        "task_publish_retry_policy": {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
    }


def make_celery(settings: Settings) -> Celery:
    app = Celery("squid", include=["service.jobs.tasks", "service.jobs.recovery"])
    app.conf.update(celery_config(settings))
    return app
