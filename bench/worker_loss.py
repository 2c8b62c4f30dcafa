"""Recovery from a lost worker with the DEFAULT settings (issue 15): seconds from the loss to the end.

Two ``squid worker`` processes (concurrency 1) on a private redis-server, default heartbeat, lease,
sweep, visibility timeout and chunk size. A job over ``--files`` real chest X-rays is submitted; once
a few chunks are done, one worker is SIGKILLed whole (its process group) while it runs a chunk. The
run records when the reaper sent the chunk again and when the job ended, relative to the kill, and
checks the result: every file exactly once, byte-identical to in-process scoring.

Usage: ``python bench/worker_loss.py [--files 320]`` (writes bench/results/worker_loss.json)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.jobs.inprocess import run_inprocess  # noqa: E402
from service.jobs.manager import JobManager  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.jobs.jobs_support import (  # noqa: E402
    RedisServer,
    freeze_holding_a_chunk,
    job_env,
    start_worker,
    wait_for,
)
from tests.jobs.pacs_tree import build_bulk_tree  # noqa: E402

DEFAULTS = Settings()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=320)
    data = Path(os.environ.get("SQUID_DATA_DIR", ROOT.parent / "shared" / "data"))
    parser.add_argument("--data", type=Path, default=data)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="squid-worker-loss-"))
    server = RedisServer(tmp / "redis", persistent=False).start()
    defaults = {  # job_env shortens these for the tests: put the real defaults back
        "SQUID_HEARTBEAT_INTERVAL_S": str(DEFAULTS.heartbeat_interval_s),
        "SQUID_HEARTBEAT_TTL_S": str(DEFAULTS.heartbeat_ttl_s),
        "SQUID_RECOVERY_INTERVAL_S": str(DEFAULTS.recovery_interval_s),
        "SQUID_VISIBILITY_TIMEOUT_S": str(DEFAULTS.visibility_timeout_s),
        "SQUID_TASK_TIME_LIMIT_S": str(DEFAULTS.task_time_limit_s),
        "SQUID_CHUNK_SIZE": str(DEFAULTS.chunk_size),
    }
    env = job_env(tmp, server.url, **defaults)
    folder = Path(env["SQUID_IMPORT_ROOT"]) / "bulk"
    build_bulk_tree(folder, args.data, args.files)
    settings = Settings(
        broker_url=server.url,
        queue=env["SQUID_QUEUE"],
        key_prefix=env["SQUID_KEY_PREFIX"],
        results_dir=Path(env["SQUID_RESULTS_DIR"]),
        import_root=Path(env["SQUID_IMPORT_ROOT"]),
    )
    workers = []
    try:
        workers = [start_worker(env, tmp / "worker-a.log"), start_worker(env, tmp / "worker-b.log")]
        manager = JobManager(settings)
        job = manager.submit_path("bulk")
        victim = workers[0]

        def frozen() -> tuple[int] | None:
            if manager.get(job.id).chunks_done < 2:
                return None
            index = freeze_holding_a_chunk(victim, manager.client, settings.key_prefix, job.id)
            return None if index is None else (index,)

        (chunk,) = wait_for(frozen, 600, "the victim to run a chunk", interval=0.02)
        victim.kill()
        killed_wall, killed = time.time(), time.monotonic()
        view = wait_for(lambda: (v := manager.get(job.id)).finished and v, 900, "the job", interval=0.2)
        finished_s = time.monotonic() - killed
        resent = [datetime.fromisoformat(e["at"]).timestamp() - killed_wall for e in view.events]
        reference = run_inprocess(folder, tmp / "local", settings)
        identical = (tmp / "local" / "instances.csv").read_bytes() == manager.result_file(
            job.id, "instance", "csv"
        ).read_bytes()
        result = {
            "benchmark": "worker_loss",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "load_average_after": [round(x, 2) for x in os.getloadavg()],
                "note": "2 shared cores: timings include waiting for the CPU",
            },
            "settings": defaults,
            "files": args.files,
            "chunks": view.chunks,
            "killed_chunk": chunk,
            "state": view.state,
            "resent_after_kill_s": [round(x, 1) for x in resent],
            "finished_after_kill_s": round(finished_s, 1),
            "chunks_redelivered": view.chunks_redelivered,
            "rows_identical_to_in_process": identical and reference.published.rows == args.files,
        }
    finally:
        for worker in workers:
            if worker.process.poll() is None:
                worker.stop()
        server.kill()
    out = ROOT / "bench" / "results" / "worker_loss.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
