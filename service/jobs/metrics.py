"""Prometheus metrics of the batch workers.

Names follow the service conventions: ``squid_`` prefix, ``_total`` counters, ``_seconds``
histograms in base units. ``squid worker`` runs the prefork pool in prometheus-client multiprocess
mode (a fresh ``PROMETHEUS_MULTIPROC_DIR`` per worker) and serves every pool process's samples on
one port from the worker's main process, together with the queue and job gauges read from Redis at
scrape time (:class:`BacklogCollector`). The API process does not import this module.

Metric                                   type       labels
squid_batch_tasks_total                  counter    task (plan|chunk|finalize), outcome (succeeded|failed|
                                                    cancelled|dropped|duplicate|requeued|retried|deferred)
squid_batch_files_total                  counter    outcome (scored|resumed|skipped|failed), reason
squid_batch_inference_seconds            histogram  -           one batched inference call
squid_batch_inference_batch_size         histogram  -           images per inference call
squid_batch_file_stage_seconds           histogram  stage (read|decode|preprocess|inference|write)
squid_batch_queue_wait_seconds           histogram  task        enqueue -> start
squid_batch_task_seconds                 histogram  task        start -> end
squid_batch_jobs_finished_total          counter    state (succeeded|failed)
squid_batch_redelivered_total            counter    task (chunk|plan|finalize), reason (worker_lost)
squid_batch_worker_info                  gauge      model_version, providers (value 1)
squid_batch_queue_messages               gauge      queue       waiting messages (from Redis)
squid_batch_unacked_messages             gauge      -           delivered, not yet acknowledged
squid_batch_jobs                         gauge      state (queued|running)
squid_batch_job_idle_seconds             gauge      -           longest a running job went without
                                                                finishing a chunk (0: none running)
squid_batch_redis_up                     gauge      -           1 when the scrape reached Redis
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from datetime import datetime

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.jobs.state import JobState

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TASK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PRIORITY_STEPS = (0, 3, 6, 9)  # kombu's Redis transport keeps one list per priority step
PRIORITY_SEP = "\x06\x16"

TASKS = Counter("squid_batch_tasks_total", "Batch tasks run, by task and outcome.", ["task", "outcome"])
FILES = Counter("squid_batch_files_total", "Files processed by batch workers.", ["outcome", "reason"])
INFERENCE = Histogram(
    "squid_batch_inference_seconds", "Duration of one batched inference call.", buckets=LATENCY_BUCKETS
)
BATCH_SIZE = Histogram(
    "squid_batch_inference_batch_size", "Images per batched inference call.", buckets=BATCH_BUCKETS
)
STAGE = Histogram(
    "squid_batch_file_stage_seconds",
    "Per-file time by stage (inference and write are the chunk's time shared out per file).",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "squid_batch_queue_wait_seconds",
    "Time a task waited between enqueue and start.",
    ["task"],
    buckets=TASK_BUCKETS,
)
TASK_TIME = Histogram("squid_batch_task_seconds", "Task run time.", ["task"], buckets=TASK_BUCKETS)
JOBS_FINISHED = Counter("squid_batch_jobs_finished_total", "Jobs finished, by final state.", ["state"])
for _state in ("succeeded", "failed"):  # exist at 0 so increase() sees the first failure
    JOBS_FINISHED.labels(_state)
REDELIVERED = Counter(
    "squid_batch_redelivered_total",
    "Tasks sent again because the worker running them stopped beating (the reaper's work).",
    ["task", "reason"],
)
REDELIVERED.labels("chunk", "worker_lost")  # exists at 0 so increase() sees the first loss
WORKER_INFO = Gauge(
    "squid_batch_worker_info",
    "The model a worker process serves (value 1).",
    ["model_version", "providers"],
    multiprocess_mode="livemax",
)


class BacklogCollector(Collector):
    """Queue depth and active jobs, read from Redis when scraped."""

    def __init__(self, state: JobState, queue: str) -> None:
        self.state, self.client, self.queue = state, state.client, queue

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("squid_batch_redis_up", "1 when the scrape could read Redis.")
        try:
            names = [self.queue if p == 0 else f"{self.queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS]
            with self.client.pipeline() as pipe:
                for name in names:
                    pipe.llen(name)
                pipe.hlen("unacked")
                pipe.smembers(self.state.active_key)
                *lengths, unacked, active = pipe.execute()
            states: dict[str, int] = {"queued": 0, "running": 0}
            idle = 0.0
            if active:
                with self.client.pipeline() as pipe:
                    for job_id in active:
                        pipe.hmget(self.state.key(job_id.decode()), "state", "started_at", "progress_at")
                    for state, started, progress in pipe.execute():
                        if state is not None and state.decode() in states:
                            states[state.decode()] += 1
                        if state == b"running":
                            idle = max(idle, idle_seconds(started, progress))
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        queued = GaugeMetricFamily(
            "squid_batch_queue_messages", "Tasks waiting in the queue.", labels=["queue"]
        )
        queued.add_metric([self.queue], sum(lengths))
        yield queued
        yield GaugeMetricFamily(
            "squid_batch_unacked_messages", "Tasks delivered but not yet acknowledged.", value=unacked
        )
        jobs = GaugeMetricFamily("squid_batch_jobs", "Jobs not yet finished, by state.", labels=["state"])
        for state, count in states.items():
            jobs.add_metric([state], count)
        yield jobs
        yield GaugeMetricFamily(
            "squid_batch_job_idle_seconds",
            "Longest time a running job has gone without finishing a chunk (since its start).",
            value=round(idle, 3),
        )


def idle_seconds(started_at: bytes | None, progress_at: bytes | None) -> float:
    """Seconds since the job last finished a unit of work (or started, before the first one)."""
    last = float(progress_at) if progress_at else 0.0
    if started_at:
        last = max(last, datetime.fromisoformat(started_at.decode()).timestamp())
    return max(0.0, time.time() - last) if last else 0.0


def serve_metrics(port: int, backlog: Collector | None) -> None:
    """Serve this worker's metrics: every pool process's (multiprocess mode) plus the backlog."""
    from prometheus_client import REGISTRY, multiprocess

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    if backlog is not None:
        registry.register(backlog)
    start_http_server(port, registry=registry)
    log.info("worker metrics on port %d", port)


def process_exited(pid: int) -> None:
    """Drop a dead pool process's live gauges (counters and histograms keep their samples)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
