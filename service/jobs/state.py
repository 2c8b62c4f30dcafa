"""Live job state in Redis, plus the job record on disk that outlives it.

Keys (``P`` = the configured key prefix):

* ``P:job:ID`` hash: state, source, label, root, job_dir, created/started/finished times, total,
  chunks, model version and namespace, threshold, error reason/detail, ``chunks_sent`` (how many
  chunks planning has sent, so a plan run again does not send them twice), planned flag,
  ``storage_failures`` and ``storage_retry_at`` (the back-off of a job whose results folder is full
  or unwritable: :func:`service.jobs.tasks.common.retry_storage`).
* ``P:job:ID:chunks`` hash: chunk index -> JSON counts of a *finished* chunk. Progress is the sum of
  this hash, so a chunk finishing twice counts once.
* ``P:job:ID:attempts`` hash: chunk index (or ``plan``) -> deliveries seen (poison-pill guard).
* ``P:job:ID:isolation`` hash: chunk index -> JSON of a chunk being scored, and after a lost
  delivery re-scored file by file (:mod:`service.jobs.isolation`).
* ``P:jobs:active`` set of queued/running job ids (for the backlog gauge).
* ``P:job:ID:inflight`` hash and ``P:job:ID:lease:UNIT`` keys: running tasks and their heartbeat
  leases (:mod:`service.jobs.heartbeat`); ``chunks_redelivered`` and ``events`` in the job hash are
  written by the reaper (:mod:`service.jobs.recovery`) and by the storage retries.

State changes are compare-and-set Lua scripts: a job only moves forward (queued -> running ->
succeeded | failed | cancelled), and writes for a job Redis no longer knows are refused, so a
restarted, emptied Redis can not be half-filled again by a worker finishing an old chunk.
``job.json`` in the job folder is written at submission and at every terminal state, only here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from service.jobs.results import atomic_write

log = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
ACTIVE_STATES = (QUEUED, RUNNING)
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)
COUNT_KEYS = ("scored", "resumed", "skipped", "out_of_domain", "failed")
PLAN_ATTEMPT = "plan"  # the planning task's field in the attempts hash (chunks use their index)
JOB_KEY_SUFFIXES = ("", ":chunks", ":attempts", ":inflight", ":isolation")

_TRANSITION = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
local allowed = false
for word in string.gmatch(ARGV[1], '[^,]+') do
  if word == state then allowed = true end
end
if not allowed then return 0 end
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
"""

_RECORD_CHUNK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return redis.call('HLEN', KEYS[2])
"""

_STORAGE_FAILURE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
return redis.call('HINCRBY', KEYS[1], 'storage_failures', 1)
"""

# KEYS: job. ARGV: event line, 1 when a chunk was re-published.
_RECORD_EVENT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local events = redis.call('HGET', KEYS[1], 'events') or ''
redis.call('HSET', KEYS[1], 'events', events .. ARGV[1] .. '\\n')
if ARGV[2] == '1' then redis.call('HINCRBY', KEYS[1], 'chunks_redelivered', 1) end
return 1
"""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def parse_iso(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class JobState:
    """Typed access to one Redis database's job keys."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._transition = client.register_script(_TRANSITION)
        self._record = client.register_script(_RECORD_CHUNK)
        self._event = client.register_script(_RECORD_EVENT)
        self._storage_failure = client.register_script(_STORAGE_FAILURE)

    def key(self, job_id: str, suffix: str = "") -> str:
        return f"{self.prefix}:job:{job_id}{suffix}"

    @property
    def active_key(self) -> str:
        return f"{self.prefix}:jobs:active"

    def create(self, job_id: str, fields: dict[str, Any]) -> None:
        mapping: dict[str | bytes, str] = {name: _encode(value) for name, value in fields.items()}
        mapping["state"] = QUEUED
        with self.client.pipeline() as pipe:
            pipe.hset(self.key(job_id), mapping=mapping)  # type: ignore[arg-type]
            pipe.sadd(self.active_key, job_id)
            pipe.execute()

    def get(self, job_id: str) -> dict[str, str] | None:
        raw = self.client.hgetall(self.key(job_id))
        if not raw:
            return None
        return {_text(k): _text(v) for k, v in raw.items()}

    def transition(self, job_id: str, allowed: tuple[str, ...], fields: dict[str, Any]) -> int:
        """Set ``fields`` if the job's state is one of ``allowed``: 1 done, 0 refused, -1 unknown job."""
        args: list[str] = [",".join(allowed)]
        for name, value in fields.items():
            args.extend((name, _encode(value)))
        return int(self._transition(keys=[self.key(job_id)], args=args))

    def finish(self, job_id: str, state: str, ttl_s: int, error: tuple[str, str] | None = None) -> bool:
        """Move an active job to a final state; its keys then expire after ``ttl_s``."""
        fields: dict[str, Any] = {"state": state, "finished_at": now_iso()}
        if error:
            fields["error_reason"], fields["error_detail"] = error
        changed = self.transition(job_id, ACTIVE_STATES, fields) == 1
        if changed:
            with self.client.pipeline() as pipe:
                pipe.srem(self.active_key, job_id)
                for suffix in JOB_KEY_SUFFIXES:
                    pipe.expire(self.key(job_id, suffix), ttl_s)
                pipe.execute()
        return changed

    def attempt(self, job_id: str, index: int | str) -> int:
        """Count one more delivery of a chunk (its index) or of planning (:data:`PLAN_ATTEMPT`)."""
        return int(self.client.hincrby(self.key(job_id, ":attempts"), str(index), 1))

    def unattempt(self, job_id: str, index: int | str) -> None:
        """Take back a delivery that stopped for a reason of its own (a full disk), not the poison guard's."""
        self.client.hincrby(self.key(job_id, ":attempts"), str(index), -1)

    def storage_failure(self, job_id: str) -> int:
        """Count one more failed write to the job's results folder; the count (-1: unknown job)."""
        return int(self._storage_failure(keys=[self.key(job_id)]))

    def hold_storage(self, job_id: str, until: float) -> None:
        """No task of the job writes before ``until`` (epoch seconds): the back-off of a full disk."""
        self.transition(job_id, ACTIVE_STATES, {"storage_retry_at": f"{until:.3f}"})

    def storage_retry_at(self, job_id: str) -> float:
        """When the job's tasks may write again (0: no back-off)."""
        raw = self.client.hget(self.key(job_id), "storage_retry_at")
        return float(raw) if raw else 0.0

    def record_event(self, job_id: str, event: dict[str, Any], redelivered: bool = False) -> bool:
        """Append ``event`` to the job's log (``events`` in the view and ``job.json``); ``redelivered``
        also counts a chunk sent again. False when the job is unknown."""
        args = [json.dumps(event), "1" if redelivered else "0"]
        return bool(self._event(keys=[self.key(job_id)], args=args))

    def record_chunk(self, job_id: str, index: int, counts: dict[str, Any]) -> int:
        """Store a finished chunk's counts; returns how many chunks are finished (-1: unknown job)."""
        keys = [self.key(job_id), self.key(job_id, ":chunks")]
        return int(self._record(keys=keys, args=[str(index), json.dumps(counts)]))

    def chunk_indices(self, job_id: str) -> set[int]:
        return {int(_text(k)) for k in self.client.hkeys(self.key(job_id, ":chunks"))}

    def progress(self, job_id: str) -> dict[str, Any]:
        """Summed counts of the finished chunks, ``chunks_done``, ``stage_ms`` totals per stage and
        ``failures`` (failed rows by reason)."""
        totals: dict[str, Any] = dict.fromkeys((*COUNT_KEYS, "chunks_done"), 0)
        stages: dict[str, float] = {}
        failures: dict[str, int] = {}
        for value in self.client.hvals(self.key(job_id, ":chunks")):
            counts = json.loads(value)
            totals["chunks_done"] += 1
            for name in COUNT_KEYS:
                totals[name] += counts.get(name, 0)
            for stage, ms in (counts.get("stage_ms") or {}).items():
                stages[stage] = stages.get(stage, 0.0) + ms
            for reason, number in (counts.get("failures") or {}).items():
                failures[reason] = failures.get(reason, 0) + number
        totals["stage_ms"] = {stage: round(ms, 3) for stage, ms in stages.items()}
        totals["failures"] = dict(sorted(failures.items()))
        return totals

    def close(
        self, job_id: str, state: str, ttl_s: int, job_dir: Path, error: tuple[str, str] | None = None
    ) -> bool:
        """:meth:`finish` the job and, when this call finished it, copy the outcome to ``job.json``."""
        changed = self.finish(job_id, state, ttl_s, error)
        if changed:
            try:
                self.save_record(job_id, job_dir)
            except OSError as exc:  # the job has ended either way; a retry would not end it again
                log.warning("job %s ended but job.json could not be written (%s)", job_id, type(exc).__name__)
        return changed

    def save_record(self, job_id: str, job_dir: Path) -> None:
        """Copy the live state and counts to ``job.json`` (what remains once Redis expired the job)."""
        live = self.get(job_id) or {}
        record = read_record(job_dir) or {"id": job_id}
        record.update({k: v for k, v in live.items() if k not in ("root", "job_dir")})
        record["progress"] = self.progress(job_id)
        write_record(job_dir, record)


def published_counts(stored: Mapping[str, Any]) -> dict[str, int]:
    """The counts the API and the CLI show, from the counts chunks store: the one place that converts.

    Stored counts are disjoint, so a job's ``done`` is their sum: ``scored`` is fresh scores only,
    ``resumed`` the scores taken from the resume cache. Users read ``scored`` as every file that got
    a score, of which ``resumed`` came from the cache.
    """
    counts = {name: int(stored.get(name, 0) or 0) for name in COUNT_KEYS}
    counts["scored"] += counts["resumed"]
    return counts


def _encode(value: Any) -> str:
    return "" if value is None else str(value)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def write_record(job_dir: Path, record: dict[str, Any]) -> None:
    """The job's durable record (``job.json``): what GET answers once Redis forgot the job."""
    atomic_write(job_dir / "job.json", json.dumps(record, indent=2, sort_keys=True))


def read_record(job_dir: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((job_dir / "job.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data
