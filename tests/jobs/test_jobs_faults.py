"""Faults in the middle of a job: a worker SIGKILLed, Redis killed and restarted (with and without
persistence). Every test runs its own redis-server, so restarting it disturbs nobody.

Jobs are submitted and followed through :class:`service.jobs.manager.JobManager`, the code behind
the HTTP routes, from the test process. The outcome must be every file exactly once, or a clear
failed state; never a job that silently lost rows.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from service.jobs.inprocess import run_inprocess
from service.jobs.manager import JobError, JobManager, JobView
from tests.jobs.jobs_support import (
    JOB_TIMEOUT_S,
    RedisServer,
    Worker,
    freeze_holding_a_chunk,
    job_env,
    metric_value,
    settings_for,
    start_worker,
    wait_for,
)
from tests.jobs.pacs_tree import build_bulk_tree

pytestmark = pytest.mark.slow  # own redis-server and workers per test, killed and restarted

FILES = 120


@contextmanager
def one_worker_stack(
    tmp_path: Path, persistent: bool, **settings: str
) -> Iterator[tuple[RedisServer, JobManager, Worker]]:
    """This test's own redis-server, one ``squid worker`` and a manager; all stopped afterwards."""
    server = RedisServer(tmp_path / "redis", persistent=persistent).start()
    env = job_env(tmp_path, server.url, **settings)
    worker = None
    try:
        worker = start_worker(env, tmp_path / "worker.log")
        yield server, JobManager(settings_for(env)), worker
    finally:
        if worker is not None:
            worker.stop()
        server.kill()


def follow(manager: JobManager, job_id: str) -> JobView:
    """The final view, riding out the seconds when Redis is down (503)."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            view = manager.get(job_id)
        except JobError as exc:
            assert exc.status == 503, exc
        else:
            if view.finished:
                return view
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not finish")


def in_flight(manager: JobManager, job_id: str, chunks_done: int) -> bool:
    """Some chunks finished and one is delivered but not acknowledged: the moment to strike."""
    view = manager.get(job_id)
    return view.chunks_done >= chunks_done and not view.finished and manager.client.hlen("unacked") >= 1


def rows_of(manager: JobManager, job_id: str) -> list[dict[str, str]]:
    path = manager.result_file(job_id, "instance", "csv")
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def assert_exactly_once(rows: list[dict[str, str]], paths: list[str]) -> None:
    seen = [row["path"] for row in rows]
    assert len(seen) == len(set(seen)), "a file has two rows"
    assert sorted(seen) == sorted(paths), "a file has no row"
    assert {row["status"] for row in rows} == {"scored"}


@pytest.fixture(scope="module")
def bulk_source(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("bulk") / "bulk"
    return root, build_bulk_tree(root, shared_data, FILES)


@pytest.fixture
def bulk(tmp_path: Path, bulk_source: tuple[Path, list[str]]) -> tuple[Path, list[str]]:
    """A private copy in this test's import root."""
    source, paths = bulk_source
    root = tmp_path / "import" / "bulk"
    shutil.copytree(source, root)
    return root, paths


def test_sigkill_worker_mid_job_then_another_worker_finishes_it(
    tmp_path: Path, bulk: tuple[Path, list[str]]
) -> None:
    """The worker started after the loss finds the orphaned chunk (its lease expired) and sends it
    again; the visibility timeout is the default hour, so kombu's own restore plays no part."""
    root, paths = bulk
    server = RedisServer(tmp_path / "redis", persistent=True).start()
    env = job_env(tmp_path, server.url, SQUID_VISIBILITY_TIMEOUT_S="3600", SQUID_TASK_TIME_LIMIT_S="1800")
    manager = JobManager(settings_for(env))
    first = start_worker(env, tmp_path / "worker-1.log")
    second = None
    try:
        job = manager.submit_path("bulk")

        def frozen_mid_chunk() -> int | None:
            """Stop the worker at a moment it runs a chunk, after a few (else let it go on)."""
            if not in_flight(manager, job.id, 3):
                return None
            return freeze_holding_a_chunk(first, manager.client, manager.settings.key_prefix, job.id)

        wait_for(lambda: frozen_mid_chunk() is not None, JOB_TIMEOUT_S, "a chunk in flight", interval=0.02)
        first.kill()
        assert manager.client.hlen("unacked") >= 1, "the killed worker's chunk must still be unacknowledged"
        assert not manager.get(job.id).finished
        second = start_worker(env, tmp_path / "worker-2.log")
        final = follow(manager, job.id)
        assert final.state == "succeeded", final
        assert final.total == final.done == final.scored == FILES
        assert final.chunks_redelivered >= 1
        assert [event["event"] for event in final.events] == ["worker_lost"] * len(final.events)
        assert manager.client.hlen("unacked") == 0, "the dead delivery must not come back in an hour"
        rows = rows_of(manager, job.id)
        assert_exactly_once(rows, paths)
        local = run_inprocess(root, tmp_path / "local", settings_for(env))
        assert local.published.rows == FILES
        reference = (tmp_path / "local" / "instances.csv").read_bytes()
        assert manager.result_file(job.id, "instance", "csv").read_bytes() == reference
    finally:
        for worker in (first, second):
            if worker is not None:
                worker.stop()
        server.kill()


def test_redis_restart_mid_job_with_persistence_loses_nothing(
    tmp_path: Path, bulk: tuple[Path, list[str]]
) -> None:
    _, paths = bulk
    with one_worker_stack(tmp_path, persistent=True) as (server, manager, _):
        job = manager.submit_path("bulk")
        wait_for(lambda: in_flight(manager, job.id, 3), JOB_TIMEOUT_S, "a chunk in flight", interval=0.02)
        server.kill()  # SIGKILL: no shutdown save; only the append-only file keeps the state
        time.sleep(0.5)
        server.start()
        final = follow(manager, job.id)
        assert final.state == "succeeded", final
        assert final.total == final.done == FILES
        assert_exactly_once(rows_of(manager, job.id), paths)


def test_redis_restart_without_persistence_is_a_clear_failure_and_resumable(
    tmp_path: Path, bulk: tuple[Path, list[str]]
) -> None:
    _, paths = bulk
    with one_worker_stack(tmp_path, persistent=False) as (server, manager, _):
        try:
            job = manager.submit_path("bulk")
            wait_for(lambda: in_flight(manager, job.id, 3), JOB_TIMEOUT_S, "a chunk in flight", interval=0.02)
            server.kill()
            server.start()  # empty: queue, job state and resume cache are gone
            lost = follow(manager, job.id)
            assert lost.state == "failed" and lost.error is not None
            assert lost.error["reason"] == "state_lost"
            with pytest.raises(JobError) as caught:
                manager.result_file(job.id, "instance", "csv")
            assert caught.value.status == 409

            again = follow(manager, manager.submit_path("bulk").id)
            assert again.state == "succeeded", again
            assert_exactly_once(rows_of(manager, again.id), paths)
            assert manager.get(job.id).state == "failed", "the lost job must stay failed"
        except redis.RedisError:
            pytest.fail("the manager must turn Redis errors into JobError(503)")


def test_pool_processes_over_the_memory_limit_are_replaced_and_the_job_completes(
    tmp_path: Path, bulk: tuple[Path, list[str]]
) -> None:
    _, paths = bulk
    memory_limited = {"SQUID_WORKER_MAX_MEMORY_MB": "1", "SQUID_CHUNK_SIZE": "40"}
    with one_worker_stack(tmp_path, persistent=False, **memory_limited) as (_, manager, worker):
        final = follow(manager, manager.submit_path("bulk").id)
        assert final.state == "succeeded", final
        assert final.total == final.done == final.scored == FILES
        assert_exactly_once(rows_of(manager, final.id), paths)
        loaded = set(re.findall(r"worker process (\d+) loaded model", worker.logs()))
        assert len(loaded) >= 3, "every task leaves its process above 1 MB, so each is replaced"


def test_a_file_past_the_task_time_limit_fails_alone_and_its_chunk_is_scored(
    tmp_path: Path, bulk: tuple[Path, list[str]]
) -> None:
    """A read that never returns (a FIFO where a file was: a hung network share) holds its chunk past
    the hard time limit. The chunk is then scored one file at a time: its three healthy files are
    scored, and the hung file, once it has stopped its worker ``max_deliveries`` times, is a
    ``kills_worker`` row; the rest of the job is scored and the job finishes."""
    root, paths = bulk
    last_chunk = sorted(paths)[-4:]  # the walk order is the sorted relative paths; chunks of 4
    with one_worker_stack(tmp_path, persistent=False) as (_, manager, worker):
        job = manager.submit_path("bulk")
        wait_for(lambda: manager.get(job.id).total == FILES, JOB_TIMEOUT_S, "the job to be planned", 0.02)
        worker.freeze()
        try:
            view = manager.get(job.id)
            assert view.chunks_done <= view.chunks - 4, "the last chunk must not have started yet"
            hung = root / last_chunk[-1]
            hung.unlink()
            os.mkfifo(hung)  # stat() says size 0; open() for reading blocks until a writer comes
        finally:
            worker.thaw()
        final = follow(manager, job.id)
        assert final.state == "succeeded", final
        assert (final.total, final.scored, final.failed) == (FILES, FILES - 1, 1), final
        assert final.failures == {"kills_worker": 1}, final
        rows = rows_of(manager, job.id)
        assert sorted(row["path"] for row in rows) == sorted(paths), "every file exactly once"
        lost = {row["path"]: row for row in rows if row["status"] != "scored"}
        assert sorted(lost) == last_chunk[-1:]
        row = lost[last_chunk[-1]]
        assert (row["status"], row["reason"]) == ("failed", "kills_worker"), row
        assert "time limit" in row["detail"], row
        limit = manager.settings.task_time_limit_s
        logs = worker.logs()
        assert f"Hard time limit ({limit}s) exceeded" in logs, logs[-3000:]
        assert len(set(re.findall(r"worker process (\d+) loaded model", logs))) >= 2, "a killed one replaced"


def retagged_artifact(target: Path) -> str:
    """The shipped artifact under another model version: a worker that must not score a job planned
    for the shipped one (its resume cache and rows would mix two models)."""
    import onnx

    from model.artifact import METADATA_KEY
    from model.artifact_source import default_artifact_path

    model = onnx.load(str(default_artifact_path()))
    entry = next(p for p in model.metadata_props if p.key == METADATA_KEY)
    meta = json.loads(entry.value)
    meta["model_version"] += ".other"
    entry.value = json.dumps(meta)
    onnx.save(model, str(target))
    return str(meta["model_version"])


def test_a_worker_with_another_model_leaves_the_job_model_mismatch_rows_not_scores(
    tmp_path: Path, bulk: tuple[Path, list[str]]
) -> None:
    """A rolling upgrade mid-job: the worker that planned the job with the shipped model is stopped
    (warm shutdown) and the only worker left serves another version. It requeues each chunk until
    ``max_deliveries``, then fails its files as ``model_mismatch``: it never scores them with the
    wrong model."""
    _, paths = bulk
    other = tmp_path / "other.onnx"
    other_version = retagged_artifact(other)
    server = RedisServer(tmp_path / "redis", persistent=False).start()
    env = job_env(tmp_path, server.url)
    manager = JobManager(settings_for(env))
    planner = start_worker(env, tmp_path / "worker-shipped.log")
    stranger = None
    try:
        job = manager.submit_path("bulk")
        # One pool process: a finished chunk means the plan task (all chunks sent) is done too.
        wait_for(lambda: manager.get(job.id).chunks_done >= 1, JOB_TIMEOUT_S, "a scored chunk", 0.02)
        planner.stop()
        job_version = manager.get(job.id).model_version
        assert job_version and job_version != other_version
        stranger = start_worker({**env, "SQUID_MODEL_PATH": str(other)}, tmp_path / "worker-other.log")
        final = follow(manager, job.id)
        assert final.state == "succeeded", final
        rows = rows_of(manager, job.id)
        assert sorted(row["path"] for row in rows) == sorted(paths), "every file exactly once"
        mismatched = [row for row in rows if row["status"] != "scored"]
        assert mismatched, "the planner cannot have scored the whole job before it was killed"
        assert {(row["status"], row["reason"]) for row in mismatched} == {("failed", "model_mismatch")}
        assert all(job_version in row["detail"] for row in mismatched)
        assert {row["model_version"] for row in rows} == {job_version}, "no row from the other model"
        text = stranger.metrics()
        assert metric_value(text, "squid_batch_tasks_total", {"task": "chunk", "outcome": "failed"}) >= 1
        assert metric_value(text, "squid_batch_tasks_total", {"task": "chunk", "outcome": "requeued"}) >= 1
        assert metric_value(text, "squid_batch_files_total", {"outcome": "scored"}) == 0
    finally:
        for worker in (planner, stranger):
            if worker is not None:
                worker.stop()
        server.kill()


SENT_FIRST = 10  # chunks the first plan has sent when its worker is stopped


def test_a_plan_sent_again_after_its_worker_died_keeps_the_job_model_and_chunks(
    tmp_path: Path, bulk: tuple[Path, list[str]]
) -> None:
    """The planner is SIGKILLed after it wrote the job's totals and model but before it sent every
    chunk; the reaper sends the plan again to the only worker left, which serves another model. That
    second plan must keep the recorded model (the stranger's chunks end as ``model_mismatch``, never
    scored with its model) and send only the chunks the first plan had not sent: every file exactly
    once, and each chunk counted once."""
    _, paths = bulk
    other = tmp_path / "other.onnx"
    other_version = retagged_artifact(other)
    server = RedisServer(tmp_path / "redis", persistent=False).start()
    # One file a chunk: sending 120 chunks leaves a window between the totals and the planned flag.
    env = job_env(
        tmp_path,
        server.url,
        SQUID_CHUNK_SIZE="1",
        SQUID_VISIBILITY_TIMEOUT_S="3600",
        SQUID_TASK_TIME_LIMIT_S="1800",
    )
    manager = JobManager(settings_for(env))
    planner = start_worker(env, tmp_path / "worker-shipped.log")
    stranger = None
    try:
        key, queue = f"{manager.settings.key_prefix}:job:", env["SQUID_QUEUE"]
        job = None
        for _ in range(3):  # a lost race (the plan finished before the freeze) is tried again
            job = manager.submit_path("bulk")
            deadline = time.monotonic() + JOB_TIMEOUT_S
            while manager.client.llen(queue) < SENT_FIRST:  # the totals are written, some chunks sent
                assert time.monotonic() < deadline, "the job was never planned"
            if manager.client.hget(key + job.id, "planned") is None:
                planner.freeze()
                if manager.client.hget(key + job.id, "planned") is None:
                    break
                planner.thaw()
            manager.cancel(job.id)
            job = None
        assert job is not None, "the planner finished planning before it could be stopped, three times"
        planner.kill()
        # Its lease gone, the stranger's first sweep sends the plan again behind the queued chunks.
        lease = f"{key}{job.id}:lease:plan"
        wait_for(lambda: not manager.client.exists(lease), JOB_TIMEOUT_S, "the plan's lease to expire")
        job_version = manager.get(job.id).model_version
        assert job_version and job_version != other_version
        sent_before = manager.client.llen(queue)
        assert SENT_FIRST <= sent_before < FILES, "some chunks, not all, were sent by the first plan"
        stranger = start_worker({**env, "SQUID_MODEL_PATH": str(other)}, tmp_path / "worker-other.log")
        final = follow(manager, job.id)
        assert final.state == "succeeded", final
        assert final.model_version == job_version, "the second plan must keep the job's model"
        assert final.total == final.done == FILES
        assert final.chunks == final.chunks_done == FILES
        rows = rows_of(manager, job.id)
        assert sorted(row["path"] for row in rows) == sorted(paths), "every file exactly once"
        assert {(row["status"], row["reason"]) for row in rows} == {("failed", "model_mismatch")}
        assert {row["model_version"] for row in rows} == {job_version}, "no row from the other model"
        text = stranger.metrics()
        assert metric_value(text, "squid_batch_tasks_total", {"task": "plan", "outcome": "succeeded"}) == 1
        assert metric_value(text, "squid_batch_files_total", {"outcome": "scored"}) == 0
        chunk_outcomes = {
            outcome: metric_value(text, "squid_batch_tasks_total", {"task": "chunk", "outcome": outcome})
            for outcome in ("failed", "succeeded", "dropped", "duplicate")
        }
        # A chunk sent twice ends once as failed and once more (its rows found, or its job over): only
        # the chunk sent as the planner stopped, before it could note it, may go out twice.
        assert chunk_outcomes["failed"] == FILES and chunk_outcomes["duplicate"] == 0
        assert chunk_outcomes["succeeded"] + chunk_outcomes["dropped"] <= 1, chunk_outcomes
    finally:
        for worker in (planner, stranger):
            if worker is not None:
                worker.stop()
        server.kill()
