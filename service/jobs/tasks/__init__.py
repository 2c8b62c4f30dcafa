"""The three Celery tasks of a job: plan (walk + chunk), score a chunk, finalize (publish results).

Every task is safe to run twice: chunk rows go to a file named by the chunk, chunk completion is a
hash field, and finalizing rewrites the same files. Importing this package registers the tasks and
the worker's signal handlers (:mod:`service.jobs.worker_signals`).
"""

from service.jobs import worker_signals
from service.jobs.tasks.finalize import finalize_job
from service.jobs.tasks.plan import plan_job
from service.jobs.tasks.score import score_chunk

__all__ = ["finalize_job", "plan_job", "score_chunk", "worker_signals"]
