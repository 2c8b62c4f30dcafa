"""Start a batch worker: ``python -m service.jobs.worker`` (what ``squid worker`` executes).

``squid worker`` prepares the environment (queue, intra-op threads, metrics port, a fresh
prometheus-client multiprocess folder) and replaces itself with this module, so the worker starts
in a clean interpreter where nothing imported a model, torch or prometheus-client before the
multiprocess folder was set.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence

POOLS = ("prefork", "solo", "threads")
OWNED_METRICS_DIR = "SQUID_WORKER_METRICS_DIR_OWNED"


def default_threads(concurrency: int, pool: str) -> int:
    """onnxruntime threads per pool process so that processes x threads does not exceed the cores."""
    cores = os.cpu_count() or 1
    processes = concurrency if pool == "prefork" else 1
    return max(1, cores // max(1, processes))


def worker_environment(
    base: dict[str, str],
    *,
    queue: str | None,
    concurrency: int,
    pool: str,
    threads: int | None,
    metrics_port: int | None,
) -> dict[str, str]:
    """The environment of a worker process (settings are passed as ``SQUID_*`` variables)."""
    env = dict(base)
    if queue:
        env["SQUID_QUEUE"] = queue
    if threads or not env.get("SQUID_INTRA_OP_THREADS"):
        env["SQUID_INTRA_OP_THREADS"] = str(threads or default_threads(concurrency, pool))
    if metrics_port:
        env["SQUID_WORKER_METRICS_PORT"] = str(metrics_port)
    if not env.get("PROMETHEUS_MULTIPROC_DIR"):
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="squid-worker-metrics-")
        env[OWNED_METRICS_DIR] = "1"
    return env


def celery_argv(queue: str, concurrency: int, pool: str, loglevel: str) -> list[str]:
    return [
        "worker",
        "--queues",
        queue,
        "--concurrency",
        str(concurrency),
        "--pool",
        pool,
        "--loglevel",
        loglevel,
        "--hostname",
        f"squid-{os.getpid()}@%h",
        "--optimization",
        "fair",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def main(argv: Sequence[str] | None = None) -> None:
    """Run a Celery worker with the given ``worker`` arguments (defaults from the settings)."""
    owner = os.getpid()
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if metrics_dir and os.environ.get(OWNED_METRICS_DIR) == "1":

        def remove_metrics_dir() -> None:
            if os.getpid() == owner:  # pool processes inherit the hook; only the worker cleans up
                shutil.rmtree(metrics_dir, ignore_errors=True)

        atexit.register(remove_metrics_dir)
    logging.basicConfig(
        level=os.environ.get("SQUID_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    )
    from service.jobs.celery_app import app
    from service.logs import quiet_third_party
    from service.settings import get_settings

    quiet_third_party()

    settings = get_settings()
    if not settings.broker_url:
        sys.exit("squid worker: SQUID_BROKER_URL is not set")
    args = list(argv) if argv else celery_argv(settings.queue, 1, "prefork", "INFO")
    app.worker_main(args)


if __name__ == "__main__":
    main(sys.argv[1:])
