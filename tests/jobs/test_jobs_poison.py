"""A poison file among healthy ones, on a real worker under a real memory limit: only the culprit fails.

The worker runs in a memory cgroup (what a container's memory limit is) limited to its own size
after a warm-up job plus a little headroom; the poison is a valid RLE DICOM just under
``max_pixels`` whose decode needs more memory than that, so the kernel's OOM killer ends the pool
process decoding it, every time. The
ten healthy files share its chunk. They must be scored, the poison alone failed with a reason, the
job's view must say which reason, and the worker must live on.
"""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import pytest

from service.jobs.inprocess import run_inprocess
from service.jobs.manager import JobManager
from tests.jobs.jobs_support import (
    JOB_TIMEOUT_S,
    RedisServer,
    Worker,
    job_env,
    settings_for,
    start_worker,
    wait_for,
)
from tests.jobs.limits_support import MemoryCgroup, memory_cgroup, pool_pids, rle_bomb
from tests.jobs.pacs_tree import build_bulk_tree

pytestmark = pytest.mark.slow  # its own redis-server and a worker whose pool process is killed

MiB = 1 << 20
HEALTHY = 10
POISON = "P000/S0001/bomb.dcm"  # sorts into the middle of the chunk
POISON_SIDE = 9800  # 96 M pixels: under the default max_pixels (100 M), ~1.2 GB at a full decode's peak
HEADROOM_MB = 400  # a third of what decoding the poison takes; a 224 px file needs a few MB


def rows_of(manager: JobManager, job_id: str) -> dict[str, dict[str, str]]:
    with manager.result_file(job_id, "instance", "csv").open(newline="", encoding="utf-8") as handle:
        return {row["path"]: row for row in csv.DictReader(handle)}


def test_a_file_that_kills_its_worker_fails_alone(shared_data: Path, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", persistent=False).start()
    # Decoded at the model's resolution the poison needs ~0.4 GB; in full, three times the headroom.
    env = job_env(
        tmp_path, server.url, SQUID_CHUNK_SIZE=str(HEALTHY + 1), SQUID_DECODE_FULL_RESOLUTION="true"
    )
    import_root = Path(env["SQUID_IMPORT_ROOT"])
    healthy = build_bulk_tree(import_root / "mixed", shared_data, HEALTHY)
    shutil.copytree(import_root / "mixed", import_root / "warm-up")
    (import_root / "mixed" / POISON).parent.mkdir(parents=True, exist_ok=True)
    (import_root / "mixed" / POISON).write_bytes(rle_bomb(POISON_SIDE, POISON_SIDE))
    reference = run_inprocess(import_root / "warm-up", tmp_path / "local", settings_for(env))
    assert reference.published.rows == HEALTHY
    with (tmp_path / "local" / "instances.csv").open(newline="", encoding="utf-8") as handle:
        expected_scores = {row["path"]: row["score"] for row in csv.DictReader(handle)}
    manager = JobManager(settings_for(env))
    with memory_cgroup("squid-poison-test") as cgroup:
        worker = start_worker(env, tmp_path / "worker.log")
        try:
            for pid in (worker.process.pid, *pool_pids(worker)):
                cgroup.add(pid)  # pool processes forked later start in it too
            run_poison_job(manager, worker, cgroup, healthy, expected_scores)
        finally:
            worker.stop()
            server.kill()


def run_poison_job(
    manager: JobManager,
    worker: Worker,
    cgroup: MemoryCgroup,
    healthy: list[str],
    expected_scores: dict[str, str],
) -> None:
    """Warm the pool process up, limit the worker to its size plus headroom, run the mixed job.

    Both jobs write DICOM results: every file is decoded (no resume cache), and the records of the
    files scored one at a time must survive the losses between them."""
    warm = manager.submit_path("warm-up", dicom_out=True)  # the pool process at its working size
    warmed = wait_for(lambda: (v := manager.get(warm.id)).finished and v, JOB_TIMEOUT_S, "the warm-up")
    assert warmed.state == "succeeded" and warmed.scored == HEALTHY, warmed
    cgroup.limit(cgroup.usage() + HEADROOM_MB * MiB)

    job = manager.submit_path("mixed", dicom_out=True)
    final = wait_for(lambda: (v := manager.get(job.id)).finished and v, JOB_TIMEOUT_S, "the job")

    logs = worker.logs()
    assert re.search(r"exited with 'signal \d+", logs), "the poison must really kill the pool process"
    assert worker.process.poll() is None, "the worker itself lives on"
    assert final.state == "succeeded", final
    assert (final.total, final.scored, final.failed) == (HEALTHY + 1, HEALTHY, 1), final
    assert final.failures == {"kills_worker": 1}, final
    assert final.chunks_redelivered >= 1 and final.events, final
    rows = rows_of(manager, job.id)
    assert sorted(rows) == sorted([*healthy, POISON]), "every file exactly once"
    bomb = rows.pop(POISON)
    assert (bomb["status"], bomb["reason"]) == ("failed", "kills_worker"), bomb
    assert "alone" in bomb["detail"], bomb
    assert {row["status"] for row in rows.values()} == {"scored"}
    assert {path: row["score"] for path, row in rows.items()} == expected_scores
    with manager.result_file(job.id, "dicom", "csv").open(newline="", encoding="utf-8") as handle:
        objects = sorted((row["path"], row["kind"], row["reason"]) for row in csv.DictReader(handle))
    dicoms = [path for path in healthy if not path.endswith(".jpeg")]
    assert objects == sorted((path, kind, "") for path in dicoms for kind in ("sc", "sr")), objects
