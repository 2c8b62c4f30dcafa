"""This pool process's model: loaded once, after the fork (never in the parent).

An onnxruntime session (or a CUDA context) created before the prefork pool forks hangs the child's
first inference, so :mod:`service.jobs.worker_signals` loads it in ``worker_process_init``; the solo
and threads pools load it lazily on the first task.
"""

from __future__ import annotations

import logging
import os
import threading

from model.runtime import SquidRuntime, open_runtime
from service import metrics as score_metrics
from service.jobs import metrics
from service.settings import get_settings

log = logging.getLogger(__name__)

_lock = threading.Lock()
_runtime: SquidRuntime | None = None


def runtime() -> SquidRuntime:
    """This process's model (loaded on first use when no ``worker_process_init`` did it)."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = open_runtime(get_settings())
            _runtime.warmup()
            metrics.WORKER_INFO.labels(_runtime.metadata.model_version, ",".join(_runtime.providers)).set(1)
            score_metrics.observe_model(_runtime.metadata.model_version)
            log.info("worker process %d loaded model %s", os.getpid(), _runtime.metadata.model_version)
        return _runtime
