"""The reaper: re-publish the tasks of a lost worker, from every live worker.

Each worker's main process sweeps the active jobs once at start-up and then every
``recovery_interval_s``: a unit in ``P:job:ID:inflight`` whose lease (:mod:`service.jobs.heartbeat`)
expired ran on a process that stopped beating, i.e. a worker that died whole. The sweep takes the
unit over atomically (one reaper wins however many workers sweep), sends its task again, counts it
in the job's ``chunks_redelivered``, appends a ``worker_lost`` event to the job's log and removes
the dead delivery from kombu's ``unacked`` set, which would otherwise come back after the Redis
visibility timeout (an hour by default).

Worst case from the loss to the task being queued again: ``heartbeat_ttl_s`` (the last beat just
before the loss) + ``recovery_interval_s`` (the sweep just missed it). Re-running is safe: chunk
rows are a file per chunk, progress a hash field per chunk, and a unit finished but not released
is cleaned up instead of being sent again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from celery.signals import worker_ready, worker_shutdown

from service.jobs.heartbeat import REAPER_PREFIX, InFlight, Leases, holder_of, new_token, text
from service.jobs.state import JobState, now_iso
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)

WORKER_LOST = "worker_lost"
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"  # kombu's Redis transport (no global key prefix)

# KEYS: lease, inflight, job, chunks. ARGV: unit, dead token, chunk index or '', reaper token, ttl_ms.
_TAKE_OVER = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local entry = redis.call('HGET', KEYS[2], ARGV[1])
if not entry or string.sub(entry, 1, #ARGV[2] + 1) ~= ARGV[2] .. '\\n' then return 0 end
local state = redis.call('HGET', KEYS[3], 'state')
local done = ARGV[3] ~= '' and redis.call('HEXISTS', KEYS[4], ARGV[3]) == 1
if ARGV[1] == 'plan' and redis.call('HGET', KEYS[3], 'planned') == '1' then done = true end
if (state ~= 'queued' and state ~= 'running') or done then
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4] .. string.sub(entry, #ARGV[2] + 1))
redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
return 1
"""

Send = Callable[[InFlight], None]


@dataclass(frozen=True)
class Recovered:
    job_id: str
    unit: str
    worker: str


def parse_events(raw: Any) -> list[dict[str, Any]]:
    """The job log as stored in the job hash / ``job.json`` (one JSON object per line)."""
    if isinstance(raw, list):
        return [dict(item) for item in raw]
    return [json.loads(line) for line in str(raw or "").splitlines() if line.strip()]


class Reaper:
    """One sweep over the active jobs of a Redis database (see the module docstring)."""

    def __init__(self, state: JobState, settings: Settings, send: Send) -> None:
        self.state, self.settings, self.send = state, settings, send
        self.leases = Leases(state)
        self.client = state.client
        self._take_over = self.client.register_script(_TAKE_OVER)

    def sweep(self) -> list[Recovered]:
        recovered = []
        for job_id in sorted(text(v) for v in self.client.smembers(self.state.active_key)):
            entries = self.leases.inflight(job_id)
            if not entries:
                continue
            with self.client.pipeline(transaction=False) as pipe:
                for entry in entries:
                    pipe.exists(self.leases.lease_key(job_id, entry.unit))
                alive = pipe.execute()
            for entry, live in zip(entries, alive, strict=True):
                if not live and self._recover(job_id, entry):
                    recovered.append(Recovered(job_id, entry.unit, holder_of(entry.token)))
        return recovered

    def _recover(self, job_id: str, entry: InFlight) -> bool:
        token = new_token(REAPER_PREFIX)
        chunk = entry.unit.removeprefix("chunk:") if entry.unit.startswith("chunk:") else ""
        keys = [
            self.leases.lease_key(job_id, entry.unit),
            self.leases.inflight_key(job_id),
            self.state.key(job_id),
            self.state.key(job_id, ":chunks"),
        ]
        ttl_ms = max(1, int(self.settings.heartbeat_ttl_s * 1000))
        if not int(self._take_over(keys=keys, args=[entry.unit, entry.token, chunk, token, ttl_ms])):
            return False
        self.send(entry)
        lost = holder_of(entry.token)
        silent = self.settings.heartbeat_ttl_s
        event = {
            "at": now_iso(),
            "event": WORKER_LOST,
            "unit": entry.unit,
            "worker": lost,
            "detail": f"no heartbeat for {silent:g} s: the task was sent again",
        }
        self.state.record_event(job_id, event, redelivered=bool(chunk))
        self.leases.release(job_id, entry.unit, token)
        self._forget_delivery(entry.task_id)
        log.warning("job %s: worker %s was lost running %s; sent it again", job_id, lost, entry.unit)
        return True

    def _forget_delivery(self, task_id: str) -> None:
        """Drop the dead worker's delivery from kombu's unacked set (it would return in an hour)."""
        if not task_id:
            return
        for tag, raw in self.client.hscan_iter(UNACKED):
            try:
                headers = json.loads(raw)[0].get("headers") or {}
            except (ValueError, IndexError, AttributeError):
                continue
            if headers.get("id") == task_id:
                with self.client.pipeline() as pipe:
                    pipe.hdel(UNACKED, tag)
                    pipe.zrem(UNACKED_INDEX, tag)
                    pipe.execute()
                return


def resend(entry: InFlight) -> None:
    """Send a unit's task again on the worker's own Celery app, with a fresh enqueue time."""
    send_again(entry.task, entry.args, entry.kwargs)


def send_again(task: str, args: list[Any], kwargs: dict[str, Any], countdown: float = 0.0) -> None:
    """Send ``task`` again on the worker's own Celery app, due in ``countdown`` seconds; its enqueue
    time is when it becomes due (the queue-wait metric does not count a back-off as waiting)."""
    from service.jobs.celery_app import app

    due = time.time() + countdown
    args = [dict(arg, enqueued_at=due) if isinstance(arg, dict) else arg for arg in args]
    kwargs = dict(kwargs)
    if "enqueued_at" in kwargs:
        kwargs["enqueued_at"] = due
    app.send_task(task, args=args, kwargs=kwargs, queue=get_settings().queue, countdown=countdown or None)


class ReaperThread:
    """Sweeps at start-up and every ``recovery_interval_s`` in the worker's main process."""

    def __init__(self, reaper: Reaper, interval_s: float, on_recovered: Callable[[Recovered], None]) -> None:
        self.reaper, self.interval, self.on_recovered = reaper, interval_s, on_recovered
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="squid-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        failing = False
        while True:
            try:
                for item in self.reaper.sweep():
                    self.on_recovered(item)
                failing = False
            except redis.RedisError as exc:  # said once per outage, not at every sweep
                (log.debug if failing else log.warning)(
                    "orphaned-task sweep failed (%s); retried", type(exc).__name__
                )
                failing = True
            except Exception:  # a bug must not end recovery for this worker's lifetime
                log.exception("orphaned-task sweep failed; retried")
            if self._stop.wait(self.interval):
                return


_thread: ReaperThread | None = None


def _count(item: Recovered) -> None:
    from service.jobs import metrics

    metrics.REDELIVERED.labels(item.unit.split(":", 1)[0], WORKER_LOST).inc()


@worker_ready.connect
def _start_reaper(**_: Any) -> None:
    global _thread
    cfg = get_settings()
    from service.jobs.worker_redis import redis_client

    reaper = Reaper(JobState(redis_client(cfg), cfg.key_prefix), cfg, resend)
    _thread = ReaperThread(reaper, cfg.recovery_interval_s, _count)
    _thread.start()


@worker_shutdown.connect
def _stop_reaper(**_: Any) -> None:
    if _thread is not None:
        _thread.stop()
