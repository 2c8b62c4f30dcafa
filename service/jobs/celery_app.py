"""The worker's Celery application: ``celery -A service.jobs.celery_app worker`` (what ``squid worker``
runs), configured from the ``SQUID_*`` settings; the tasks are in :mod:`service.jobs.tasks`."""

from __future__ import annotations

from service.jobs.celery_config import CHUNK_TASK, FINALIZE_TASK, PLAN_TASK, make_celery
from service.settings import get_settings

app = make_celery(get_settings())

__all__ = ["CHUNK_TASK", "FINALIZE_TASK", "PLAN_TASK", "app"]
