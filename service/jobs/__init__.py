"""Batch scoring of PACS export folders: walker, chunked tasks, idempotent result files.

- :mod:`walker` finds the files (DICOMDIR when present), :mod:`chunking` slices them,
  :mod:`scoring` scores a chunk on the shared pipeline, :mod:`rows` defines result rows and reasons,
  :mod:`results` writes chunk files and publishes instances/studies CSV + JSON Lines,
  :mod:`cache` keeps scores for resuming (content hash + model).
- Workers: :mod:`celery_config` / :mod:`celery_app`, :mod:`tasks` (``plan``, ``score``,
  ``finalize``: one module per task), :mod:`task_wrapper` (their shared bookkeeping),
  :mod:`worker_model` / :mod:`worker_redis` (per-process model and Redis client),
  :mod:`worker_signals`, :mod:`state` (Redis job state + ``job.json``, the only writer),
  :mod:`metrics`, :mod:`worker` (``squid worker``).
- Submitting: :mod:`manager` (HTTP routes and ``squid batch`` with a broker), :mod:`archive` (zip
  uploads); without a broker :mod:`inprocess` runs the same steps in one process.
"""
