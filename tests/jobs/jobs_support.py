"""Real processes for the batch-job tests: a private redis-server, ``squid worker``, ``squid serve``.

Every test run gets its own Redis instance on a free port (never the shared 127.0.0.1:6379), its own
queue name and key prefix, and its own results folder, so parallel runs cannot collide.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import redis

from service.settings import Settings
from tests.net_support import (
    free_port,
    metric_value,  # noqa: F401  (re-exported for the tests)
    stop_process_group,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 180.0
JOB_TIMEOUT_S = 240.0  # a hang guard, not a performance assertion
SAMPLES = REPO_ROOT / "samples"
LIMIT_SAFETY = 10  # the hard task limit is this many times a chunk's measured scoring time
MIN_TASK_LIMIT_S = 3


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


@dataclass
class RedisServer:
    """A redis-server child; ``persistent`` = AOF with fsync on every write (survives SIGKILL)."""

    workdir: Path
    persistent: bool
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        args += ["--save", ""]
        if self.persistent:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        log = (self.workdir / "redis.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for(up, 30, "redis-server")
        return self

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text

    def freeze(self) -> None:
        os.killpg(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes (the whole process group)."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        stop_process_group(self.process)

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@cache
def seconds_per_file() -> float:
    """The slowest time to read, decode and score one sample X-ray here, now (best of three rounds).

    Measured once per session in this process, on this machine as loaded as it is: the task time
    limits of the worker tests are derived from it instead of a fixed number a starved machine hits.
    """
    from model.runtime import SquidRuntime
    from model.steps import infer, prepare

    runtime = SquidRuntime(intra_op_threads=1)
    files = [path.read_bytes() for path in sorted(SAMPLES.iterdir()) if path.suffix in (".dcm", ".jpeg")]
    infer(runtime, [prepare(files[0], runtime.preprocessing, 100_000_000)])  # warm-up
    rounds = []
    for _ in range(3):
        slowest = 0.0
        for data in files:
            started = time.perf_counter()
            infer(runtime, [prepare(data, runtime.preprocessing, 100_000_000)])
            slowest = max(slowest, time.perf_counter() - started)
        rounds.append(slowest)
    return min(rounds)


def task_limits(chunk_size: int) -> tuple[int, int]:
    """(hard task limit, visibility timeout) in seconds for chunks of ``chunk_size`` files."""
    limit = max(MIN_TASK_LIMIT_S, math.ceil(LIMIT_SAFETY * chunk_size * seconds_per_file()))
    return limit, limit + 2


def job_env(tmp: Path, redis_url: str, **extra: str) -> dict[str, str]:
    """Settings shared by the worker, the API and in-test managers of one test."""
    tag = uuid.uuid4().hex[:10]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUID_") or k == "SQUID_DATA_DIR"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        {
            "SQUID_BROKER_URL": redis_url,
            "SQUID_QUEUE": f"test-{tag}",
            "SQUID_KEY_PREFIX": f"test-{tag}",
            "SQUID_RESULTS_DIR": str(tmp / "results"),
            "SQUID_IMPORT_ROOT": str(tmp / "import"),
            "SQUID_CHUNK_SIZE": "4",
            # Leases beat twice a second and a lost worker's task is re-published within ~6 s.
            "SQUID_HEARTBEAT_INTERVAL_S": "0.5",
            "SQUID_HEARTBEAT_TTL_S": "5",
            "SQUID_RECOVERY_INTERVAL_S": "0.5",
            "SQUID_LOG_LEVEL": "INFO",
            **extra,
        }
    )
    if "SQUID_TASK_TIME_LIMIT_S" not in extra:
        limit, visibility = task_limits(int(env["SQUID_CHUNK_SIZE"]))
        env["SQUID_TASK_TIME_LIMIT_S"] = str(limit)
        env["SQUID_VISIBILITY_TIMEOUT_S"] = str(visibility)
    return env


def start_worker(
    env: dict[str, str], log_path: Path, concurrency: int = 1, pool: str = "prefork", threads: int = 1
) -> Worker:
    """``squid worker`` in its own process group; returns once a pool process loaded the model."""
    port = free_port()
    command = [sys.executable, "-m", "cli.main", "worker", "--concurrency", str(concurrency)]
    command += ["--pool", pool, "--metrics-port", str(port), "--threads", str(threads)]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    worker = Worker(process, log_path, port)

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"squid worker exited with {process.returncode}:\n{worker.logs()[-4000:]}")
        try:
            return "squid_batch_worker_info{" in worker.metrics()
        except httpx.TransportError:
            return False

    wait_for(ready, STARTUP_TIMEOUT_S, "squid worker to load its model", interval=0.3)
    return worker


@dataclass
class Api:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60.0)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def start_api(env: dict[str, str], log_path: Path) -> Api:
    """The real API: ``squid serve`` (uvicorn, ``service.app:create_app``) on a free port."""
    port = free_port()
    command = [sys.executable, "-m", "cli.main", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    api = Api(f"http://127.0.0.1:{port}", process, log_path)

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"squid serve exited with {process.returncode}:\n{api.logs()[-4000:]}")
        try:
            return httpx.get(f"{api.url}/readyz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(ready, STARTUP_TIMEOUT_S, "squid serve", interval=0.3)
    return api


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
        check=False,
    )


def chunk_running_on(worker: Worker, client: redis.Redis, prefix: str, job_id: str) -> int | None:
    """A chunk of the job that a process of ``worker`` holds the lease of and has not finished."""
    inflight = client.hgetall(f"{prefix}:job:{job_id}:inflight")
    done = {int(key) for key in client.hkeys(f"{prefix}:job:{job_id}:chunks")}
    for unit, entry in inflight.items():
        token = entry.decode().split("\n", 1)[0]
        if not unit.startswith(b"chunk:") or token.startswith("reaper:"):
            continue
        index, pid = int(unit.decode().split(":")[1]), int(token.rsplit(":", 2)[1])
        try:
            group = os.getpgid(pid)
        except ProcessLookupError:
            continue
        if group == worker.process.pid and index not in done:
            return index
    return None


def freeze_holding_a_chunk(worker: Worker, client: redis.Redis, prefix: str, job_id: str) -> int | None:
    """SIGSTOP ``worker`` at a moment it runs a chunk (the chunk's index), else leave it running."""
    if chunk_running_on(worker, client, prefix, job_id) is None:
        return None
    worker.freeze()
    index = chunk_running_on(worker, client, prefix, job_id)
    if index is None:
        worker.thaw()
    return index


def settings_for(env: dict[str, str]) -> Settings:
    """The settings of ``env`` (a :func:`job_env`) for a manager or in-process run in the test."""
    return Settings(
        broker_url=env["SQUID_BROKER_URL"],
        queue=env["SQUID_QUEUE"],
        key_prefix=env["SQUID_KEY_PREFIX"],
        results_dir=Path(env["SQUID_RESULTS_DIR"]),
        import_root=Path(env["SQUID_IMPORT_ROOT"]),
        chunk_size=int(env["SQUID_CHUNK_SIZE"]),
        visibility_timeout_s=int(env["SQUID_VISIBILITY_TIMEOUT_S"]),
        task_time_limit_s=int(env["SQUID_TASK_TIME_LIMIT_S"]),
    )


@dataclass
class ApiStack:
    """A redis-server, one ``squid worker`` and ``squid serve`` of one test module."""

    tmp: Path
    env: dict[str, str]
    redis: RedisServer
    worker: Worker
    api: Api
    http: httpx.Client

    @property
    def import_root(self) -> Path:
        return Path(self.env["SQUID_IMPORT_ROOT"])

    @property
    def results_dir(self) -> Path:
        return Path(self.env["SQUID_RESULTS_DIR"])


@contextmanager
def api_stack(tmp: Path, redis_server: RedisServer, env: dict[str, str]) -> Iterator[ApiStack]:
    """Start a worker and the API on ``env``; stop them and ``redis_server`` afterwards."""
    worker = None
    api = None
    try:
        worker = start_worker(env, tmp / "worker.log")
        api = start_api(env, tmp / "api.log")
        with api.client() as http:
            yield ApiStack(tmp, env, redis_server, worker, api, http)
    finally:
        if api is not None:
            api.stop()
        if worker is not None:
            worker.stop()
        redis_server.kill()


def wait_job(http: httpx.Client, job_id: str, timeout: float = JOB_TIMEOUT_S) -> dict[str, Any]:
    """``GET /jobs/{id}`` until the job ended; its last view."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = http.get(f"/jobs/{job_id}")
        assert view.status_code == 200, view.text
        body: dict[str, Any] = view.json()
        if body["state"] in ("succeeded", "failed", "cancelled"):
            return body
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not finish")
