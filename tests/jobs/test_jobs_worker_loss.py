"""A worker lost whole mid-job, with another one alive: a private redis-server, two ``squid worker``
processes, the API under ``squid serve`` and ``squid batch`` with the broker.

The lost worker is SIGKILLed with its pool process (its process group: a dead host, an OOM-killed
main process) while it runs a chunk. The visibility timeout is left at its default hour, so only
the heartbeat leases and the survivor's reaper can bring the chunk back. The leases are shortened
(``jobs_support.job_env``) so each test takes seconds; docs/architecture.md has the defaults' bound.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from service.jobs.inprocess import run_inprocess
from service.jobs.manager import JobManager
from tests.jobs.jobs_support import (
    JOB_TIMEOUT_S,
    REPO_ROOT,
    Api,
    RedisServer,
    Worker,
    chunk_running_on,
    freeze_holding_a_chunk,
    job_env,
    metric_value,
    settings_for,
    start_api,
    start_worker,
    wait_for,
)
from tests.jobs.pacs_tree import build_bulk_tree

FILES = 48
COPIES = tuple("abcdefghijkl")  # the slow job's chunk: 576 files, well past a lease on a fast machine
SETTINGS = {
    # The defaults: kombu's own restore of an unacknowledged task takes an hour and plays no part.
    "SQUID_VISIBILITY_TIMEOUT_S": "3600",
    "SQUID_TASK_TIME_LIMIT_S": "1800",
    # Short leases: a lost chunk is back within ~9 s. Sixteen beats per lease: on a CPU-starved
    # machine (load 10 on 2 cores, niced) a pool process went 3 s without beating, and a lease
    # must not expire for that.
    "SQUID_HEARTBEAT_INTERVAL_S": "0.5",
    "SQUID_HEARTBEAT_TTL_S": "8",
    "SQUID_RECOVERY_INTERVAL_S": "0.5",
}


@dataclass
class Stack:
    tmp: Path
    env: dict[str, str]
    redis: RedisServer
    client: redis.Redis
    api: Api
    workers: list[Worker]
    paths: list[str]
    reference: bytes  # instances.csv of the same folder scored in-process

    @property
    def prefix(self) -> str:
        return self.env["SQUID_KEY_PREFIX"]

    def live_workers(self, count: int) -> list[Worker]:
        """``count`` running workers (starting new ones for those killed by an earlier test)."""
        self.workers[:] = [w for w in self.workers if w.process.poll() is None]  # the fixture stops these
        while len(self.workers) < count:
            log = self.tmp / f"worker-{time.monotonic_ns()}.log"
            self.workers.append(start_worker(self.env, log))
        return self.workers[:count]

    def manager(self, **update: Any) -> JobManager:
        return JobManager(settings_for(self.env).model_copy(update=update))


@pytest.fixture(scope="module")
def stack(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("worker-loss")
    server = RedisServer(tmp / "redis", persistent=False).start()
    env = job_env(tmp, server.url, **SETTINGS)
    folder = Path(env["SQUID_IMPORT_ROOT"]) / "bulk"
    paths = build_bulk_tree(folder, shared_data, FILES)
    for copy in COPIES:  # the slow job: twelve times the files in one chunk
        shutil.copytree(folder, Path(env["SQUID_IMPORT_ROOT"]) / "slow" / copy)
    local = run_inprocess(folder, tmp / "local", settings_for(env))
    assert local.published.rows == FILES
    workers: list[Worker] = []
    api = None
    try:
        workers = [start_worker(env, tmp / "worker-a.log"), start_worker(env, tmp / "worker-b.log")]
        api = start_api(env, tmp / "api.log")
        reference = (tmp / "local" / "instances.csv").read_bytes()
        client = redis.Redis.from_url(server.url)
        yield Stack(tmp, env, server, client, api, workers, paths, reference)
    finally:
        if api is not None:
            api.stop()
        for worker in workers:
            worker.stop()
        server.kill()


def view_of(stack: Stack, job_id: str) -> dict[str, Any]:
    with httpx.Client(base_url=stack.api.url, timeout=30) as http:
        response = http.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_finished(stack: Stack, job_id: str) -> dict[str, Any]:
    return dict(
        wait_for(
            lambda: (v := view_of(stack, job_id))["state"] not in ("queued", "running") and v,
            JOB_TIMEOUT_S,
            f"job {job_id} to finish",
            interval=0.2,
        )
    )


def kill_while_running_a_chunk(stack: Stack, victim: Worker, job_id: str) -> int:
    """SIGKILL the victim's whole process group while it runs a chunk of the job; the chunk."""

    def frozen() -> tuple[int] | None:  # a tuple: chunk 0 is falsy
        index = freeze_holding_a_chunk(victim, stack.client, stack.prefix, job_id)
        return None if index is None else (index,)

    (index,) = wait_for(frozen, JOB_TIMEOUT_S, "the victim to run a chunk", interval=0.02)
    victim.kill()
    return int(index)


def assert_rows_exactly_once(stack: Stack, body: bytes) -> None:
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    seen = [row["path"] for row in rows]
    assert len(seen) == len(set(seen)) == FILES, "a file has two rows, or none"
    assert sorted(seen) == sorted(stack.paths)
    assert {row["status"] for row in rows} == {"scored"}
    assert body == stack.reference, "scores differ from in-process scoring"


def assert_worker_lost_recorded(stack: Stack, job_id: str, view: dict[str, Any], chunk: int) -> None:
    assert view["chunks_redelivered"] >= 1, view
    lost = [event for event in view["events"] if event["event"] == "worker_lost"]
    assert f"chunk:{chunk}" in {event["unit"] for event in lost}, view["events"]
    record = json.loads((Path(stack.env["SQUID_RESULTS_DIR"]) / job_id / "job.json").read_text())
    assert int(record["chunks_redelivered"]) == view["chunks_redelivered"]
    assert "worker_lost" in record["events"]
    assert stack.client.hlen("unacked") == 0, "the dead delivery would come back after the visibility timeout"
    survivors = sum(
        metric_value(w.metrics(), "squid_batch_redelivered_total", {"task": "chunk", "reason": "worker_lost"})
        for w in stack.live_workers(1)
    )
    assert survivors >= 1


def test_api_job_finishes_when_a_worker_dies_whole(stack: Stack) -> None:
    victim, _ = stack.live_workers(2)
    with httpx.Client(base_url=stack.api.url, timeout=30) as http:
        response = http.post("/jobs", json={"path": "bulk"})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    chunk = kill_while_running_a_chunk(stack, victim, job_id)
    killed = time.monotonic()
    final = wait_finished(stack, job_id)
    print(f"job finished {time.monotonic() - killed:.1f} s after the kill")  # informative only
    assert final["state"] == "succeeded", final
    assert final["total"] == final["done"] == final["scored"] == FILES
    assert final["chunks_done"] == final["chunks"]
    with httpx.Client(base_url=stack.api.url, timeout=30) as http:
        csv_body = http.get(f"/jobs/{job_id}/results", params={"format": "csv", "level": "instance"}).content
    assert_rows_exactly_once(stack, csv_body)
    assert_worker_lost_recorded(stack, job_id, final, chunk)


def test_squid_batch_with_a_broker_finishes_when_a_worker_dies_whole(stack: Stack) -> None:
    victim, _ = stack.live_workers(2)
    for key in stack.client.scan_iter(f"{stack.prefix}:cache:*"):  # an earlier test scored these files:
        stack.client.delete(key)  # without the resume cache every chunk really runs, long enough to be caught
    out, err = stack.tmp / "batch-out", stack.tmp / "batch.err"
    folder = Path(stack.env["SQUID_IMPORT_ROOT"]) / "bulk"
    command = [sys.executable, "-m", "cli.main", "batch", str(folder), "--out", str(out), "--no-progress"]
    with err.open("wb") as stderr:
        batch = subprocess.Popen(
            command, cwd=REPO_ROOT, env=stack.env, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
    try:
        job_id = wait_for(lambda: submitted_job(err), JOB_TIMEOUT_S, "squid batch to submit")
        chunk = kill_while_running_a_chunk(stack, victim, job_id)
        stdout, _ = batch.communicate(timeout=JOB_TIMEOUT_S)
    finally:
        if batch.poll() is None:
            batch.kill()
            batch.wait()
    assert batch.returncode == 0, err.read_text()
    assert "chunks sent again (worker lost)" in stdout, stdout
    assert_rows_exactly_once(stack, (out / "instances.csv").read_bytes())
    assert_worker_lost_recorded(stack, job_id, view_of(stack, job_id), chunk)


def test_a_slow_chunk_on_a_live_worker_is_not_sent_again(stack: Stack) -> None:
    """One chunk of 576 files with DICOM results (no resume cache: every file is decoded, scored and
    written as an SR and a capture) outlasts a lease and a sweep; the idle second worker's reaper
    sweeps all the while, yet the chunk runs once because its heartbeat keeps the lease alive."""
    workers = stack.live_workers(2)
    total = len(COPIES) * FILES
    manager = stack.manager(chunk_size=total)
    job = manager.submit_path("slow", dicom_out=True)
    final = wait_for(lambda: (v := manager.get(job.id)).finished and v, JOB_TIMEOUT_S, "the slow job")
    assert final.state == "succeeded" and final.chunks == 1, final
    assert final.done == final.scored == total and final.resumed == 0
    window_s = float(stack.env["SQUID_HEARTBEAT_TTL_S"]) + float(stack.env["SQUID_RECOVERY_INTERVAL_S"])
    chunk_s = sum(final.stage_ms_per_file.values()) * total / 1e3
    if chunk_s <= window_s:
        pytest.skip(f"the chunk took {chunk_s:.1f} s: too fast to outlast a lease and a sweep here")
    assert final.chunks_redelivered == 0 and final.events == [], final
    attempts = stack.client.hget(f"{stack.prefix}:job:{job.id}:attempts", "0")
    assert attempts is not None and int(attempts) == 1, "the chunk was delivered more than once"
    duplicates = {"task": "chunk", "outcome": "duplicate"}
    assert sum(metric_value(w.metrics(), "squid_batch_tasks_total", duplicates) for w in workers) == 0
    rows = list(csv.DictReader(manager.result_file(job.id, "instance", "csv").open(encoding="utf-8")))
    expected = [f"{copy}/{path}" for copy in COPIES for path in stack.paths]
    assert sorted(row["path"] for row in rows) == sorted(expected)
    assert {row["status"] for row in rows} == {"scored"}


def submitted_job(stderr: Path) -> str | None:
    """The job id ``squid batch`` announces on stderr (``job ID submitted to queue Q``)."""
    for line in stderr.read_text(encoding="utf-8", errors="replace").splitlines():
        words = line.split()
        if len(words) > 1 and words[0] == "job":
            return words[1]
    return None


def test_a_pool_process_killed_alone_is_recovered_once(stack: Stack) -> None:
    """The OOM killer's usual victim: only the pool process dies, its worker lives on. Celery requeues
    the task at once; that delivery finds the dead process's lease and is dropped, and the reaper
    sends the chunk again when the lease expires: the chunk is scored, never lost or doubled."""
    victim, _ = stack.live_workers(2)
    manager = stack.manager()
    job = manager.submit_path("bulk", dicom_out=True)  # no resume cache: every chunk really runs

    def pool_pid() -> tuple[int] | None:
        index = chunk_running_on(victim, stack.client, stack.prefix, job.id)
        entry = stack.client.hget(f"{stack.prefix}:job:{job.id}:inflight", f"chunk:{index}")
        if index is None or entry is None:
            return None
        return (int(entry.decode().split("\n", 1)[0].rsplit(":", 2)[1]),)

    (pid,) = wait_for(pool_pid, JOB_TIMEOUT_S, "a chunk in a pool process", interval=0.02)
    os.kill(pid, signal.SIGKILL)
    final = wait_for(lambda: (v := manager.get(job.id)).finished and v, JOB_TIMEOUT_S, "the job")
    assert final.state == "succeeded", final
    assert final.total == final.done == final.scored == FILES
    assert final.chunks_redelivered >= 1 and final.events, final
    assert victim.process.poll() is None, "the worker itself lives on"
    rows = list(csv.DictReader(manager.result_file(job.id, "instance", "csv").open(encoding="utf-8")))
    assert sorted(row["path"] for row in rows) == sorted(stack.paths)
