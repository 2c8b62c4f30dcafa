"""Leases of running batch tasks: who runs which unit of a job, kept alive by a heartbeat.

A task (a chunk, the planning or the finalizing of a job) claims a *lease* before it works: a Redis
key ``P:job:ID:lease:UNIT`` holding the runner's token with a short TTL, refreshed by a thread of
the running process every ``heartbeat_interval_s``. Beside it, ``P:job:ID:inflight`` keeps, per
unit, the token and what is needed to send the task again. A worker that dies whole (SIGKILL,
host lost) stops beating; its lease expires after ``heartbeat_ttl_s`` and the reaper
(:mod:`service.jobs.recovery`) re-publishes the unit. A slow task on a live worker keeps beating,
so it is never re-published.

A second delivery of a unit whose lease is held by another live runner (Redis' visibility-timeout
redelivery of a long task, Celery's requeue after a pool process died while its lease still runs)
is dropped as ``duplicate``: the holder finishes it, or the reaper re-publishes it once the lease
expired. A lease held by a reaper is only a reservation and is taken over by the task it sent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from celery import Task

from service.jobs.state import RUNNING, JobState
from service.settings import Settings

log = logging.getLogger(__name__)

REAPER_PREFIX = "reaper:"
DUPLICATE = "duplicate"

# KEYS: lease, inflight, job. ARGV: token, ttl_ms, unit, entry.
_CLAIM = """
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] and string.sub(holder, 1, 7) ~= 'reaper:' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[1] .. '\\n' .. ARGV[4])
return 1
"""

# KEYS: lease. ARGV: token, ttl_ms.
_BEAT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: lease, inflight. ARGV: token, unit.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
local entry = redis.call('HGET', KEYS[2], ARGV[2])
if entry and string.sub(entry, 1, #ARGV[1] + 1) == ARGV[1] .. '\\n' then
  redis.call('HDEL', KEYS[2], ARGV[2])
end
return 1
"""


def chunk_unit(index: int) -> str:
    return f"chunk:{index}"


def new_token(prefix: str = "") -> str:
    """A runner's identity: host and pid (for the job log), and a nonce (pids are reused)."""
    return f"{prefix}{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def holder_of(token: str) -> str:
    """The host:pid part of a token (what the ``worker_lost`` event names)."""
    return token.removeprefix(REAPER_PREFIX).rsplit(":", 1)[0]


@dataclass(frozen=True)
class InFlight:
    """One claimed unit: its runner's token and the task to send again if the runner is lost."""

    unit: str
    token: str
    task: str
    task_id: str
    args: list[Any]
    kwargs: dict[str, Any]
    started_at: float

    def encode(self) -> str:
        body = {
            "task": self.task,
            "task_id": self.task_id,
            "args": self.args,
            "kwargs": self.kwargs,
            "started_at": self.started_at,
        }
        return json.dumps(body)

    @classmethod
    def decode(cls, unit: str, raw: str) -> InFlight:
        token, _, body = raw.partition("\n")
        data = json.loads(body)
        return cls(
            unit,
            token,
            data["task"],
            str(data.get("task_id") or ""),
            data["args"],
            data["kwargs"],
            float(data["started_at"]),
        )


class Leases:
    """Claim, beat and release the leases of one Redis database's jobs."""

    def __init__(self, state: JobState) -> None:
        self.state = state
        self.client = state.client
        self._claim = self.client.register_script(_CLAIM)
        self._beat = self.client.register_script(_BEAT)
        self._release = self.client.register_script(_RELEASE)

    def lease_key(self, job_id: str, unit: str) -> str:
        return self.state.key(job_id, f":lease:{unit}")

    def inflight_key(self, job_id: str) -> str:
        return self.state.key(job_id, ":inflight")

    def claim(self, job_id: str, entry: InFlight, ttl_s: float) -> int:
        """1 claimed, 0 held by another live runner, -1 the job is unknown."""
        keys = [self.lease_key(job_id, entry.unit), self.inflight_key(job_id), self.state.key(job_id)]
        args: list[str | int] = [entry.token, _ms(ttl_s), entry.unit, entry.encode()]
        return int(self._claim(keys=keys, args=args))

    def beat(self, job_id: str, unit: str, token: str, ttl_s: float) -> bool:
        """Extend the lease; False when it is no longer ours (it expired: we were too slow to beat)."""
        return bool(self._beat(keys=[self.lease_key(job_id, unit)], args=[token, _ms(ttl_s)]))

    def release(self, job_id: str, unit: str, token: str) -> None:
        keys = [self.lease_key(job_id, unit), self.inflight_key(job_id)]
        self._release(keys=keys, args=[token, unit])

    def inflight(self, job_id: str) -> list[InFlight]:
        raw = self.client.hgetall(self.inflight_key(job_id))
        return [InFlight.decode(text(unit), text(value)) for unit, value in raw.items()]


class Heartbeat:
    """A daemon thread that refreshes one lease until stopped."""

    def __init__(self, leases: Leases, job_id: str, unit: str, token: str, settings: Settings) -> None:
        self.leases, self.job_id, self.unit, self.token = leases, job_id, unit, token
        self.interval, self.ttl = settings.heartbeat_interval_s, settings.heartbeat_ttl_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{unit}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=max(1.0, self.interval))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.leases.beat(self.job_id, self.unit, self.token, self.ttl):
                    log.warning(
                        "job %s: the lease of %s expired while it ran (no beat for %.0f s); "
                        "it may run twice, its rows are written once",
                        self.job_id,
                        self.unit,
                        self.ttl,
                    )
                    return
            except redis.RedisError as exc:  # the task itself notices a lasting outage
                log.warning("job %s: heartbeat of %s failed (%s)", self.job_id, self.unit, type(exc).__name__)


def run_leased(
    state: JobState,
    settings: Settings,
    job_id: str,
    unit: str,
    task: Task,
    body: Callable[[], str],
) -> str:
    """Run ``body`` while holding the unit's lease; ``duplicate`` when a live runner holds it.

    ``task`` is the running Celery task: its name, id and arguments are what the reaper sends
    again if this process dies. The lease is released however ``body`` ends: a task that raised
    is requeued by Celery and claims again. A unit that succeeded stamps the job's
    ``progress_at`` (the stalled-job gauge).
    """
    leases = Leases(state)
    request = task.request
    entry = InFlight(
        unit,
        new_token(),
        str(task.name),
        str(request.id or ""),
        list(request.args or ()),
        dict(request.kwargs or {}),
        time.time(),
    )
    claimed = leases.claim(job_id, entry, settings.heartbeat_ttl_s)
    if claimed == 0:
        log.warning("job %s: %s is running on a live worker; this delivery is dropped", job_id, unit)
        return DUPLICATE
    if claimed < 0:
        return body()  # an unknown job: the body drops it
    try:
        with Heartbeat(leases, job_id, unit, entry.token, settings):
            outcome = body()
    finally:
        try:
            leases.release(job_id, unit, entry.token)
        except redis.RedisError:
            log.warning("job %s: could not release the lease of %s; it expires by itself", job_id, unit)
    if outcome == "succeeded":
        with contextlib.suppress(redis.RedisError):
            state.transition(job_id, (RUNNING,), {"progress_at": f"{time.time():.3f}"})
    return outcome


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
