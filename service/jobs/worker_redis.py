"""This process's Redis client for job state, created after the fork (a socket is never shared)."""

from __future__ import annotations

import os
import threading

import redis

from service.jobs.state import JobState
from service.settings import Settings, get_settings

_lock = threading.Lock()
_state: tuple[int, JobState] | None = None


def redis_client(cfg: Settings) -> redis.Redis:
    """The worker side's Redis connection settings, in one place (tasks and the reaper thread)."""
    return redis.Redis.from_url(
        cfg.broker_url or "redis://127.0.0.1:6379/0",
        socket_connect_timeout=5,
        socket_timeout=30,
        health_check_interval=10,
    )


def job_state() -> JobState:
    """A Redis client per process, recreated when the pid changed (a forked child)."""
    global _state
    with _lock:
        if _state is None or _state[0] != os.getpid():
            cfg = get_settings()
            _state = (os.getpid(), JobState(redis_client(cfg), cfg.key_prefix))
        return _state[1]
