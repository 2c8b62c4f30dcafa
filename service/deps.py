"""Typed dependencies of the routes: the app state (settings, runtime, batcher) and the API key check."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import (
    APIKeyHeader,
    HTTPAuthorizationCredentials,
    HTTPBasic,
    HTTPBasicCredentials,
    HTTPBearer,
)
from starlette.concurrency import run_in_threadpool

from model.imaging.reader import PEAK_BYTES_PER_PIXEL, declared_pixels
from model.runtime import SquidRuntime, open_runtime
from model.steps import Prepared, prepare
from service import metrics, readiness
from service.batching import MicroBatcher
from service.decode_budget import DecodeBudget
from service.errors import CROSS_ORIGIN, NOT_READY, UNAUTHORIZED, ApiError
from service.jobs.manager import JobManager
from service.settings import Settings

log = logging.getLogger("squid.app")


@dataclass
class AppState:
    """Everything a request needs, created by :func:`service.app.create_app`, filled at startup."""

    settings: Settings
    runtime: SquidRuntime | None = None
    batcher: MicroBatcher | None = None
    jobs: JobManager | None = None
    ready: bool = False
    load_error: str | None = None
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="squid-infer")
    )
    # Decoding runs in the thread pool; bound how many large images are in memory at once.
    decode_slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(max(2, os.cpu_count() or 2))
    )
    decode_budget: DecodeBudget | None = None  # made on first use, inside the event loop

    async def load(self) -> None:
        """Open the artifact (unless one was given), warm it up, start the batcher; never raises."""
        loop = asyncio.get_running_loop()
        try:
            if self.runtime is None:
                self.runtime = await loop.run_in_executor(self.executor, open_runtime, self.settings)
            runtime = self.runtime
            await loop.run_in_executor(self.executor, runtime.warmup)
            self.batcher = MicroBatcher(
                runtime,
                max_batch=self.settings.max_batch,
                max_wait_ms=self.settings.max_wait_ms,
                executor=self.executor,
            )
            self.batcher.start()
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model failed to load")
            return
        metrics.set_model(runtime.metadata, runtime.threshold)
        self.ready = True
        readiness.mark_ready()
        log.info(
            "model ready",
            extra={
                "model_name": runtime.metadata.model_name,
                "model_version": runtime.metadata.model_version,
                "threshold": runtime.threshold,
                "providers": runtime.providers,
                "max_batch": self.settings.max_batch,
                "max_wait_ms": self.settings.max_wait_ms,
            },
        )

    async def close(self) -> None:
        self.ready = False
        readiness.mark_not_ready()
        metrics.MODEL_READY.set(0)
        if self.batcher is not None:
            await self.batcher.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def ready_parts(self) -> tuple[SquidRuntime, MicroBatcher]:
        """The runtime and batcher, or a 503 while loading (or after a failed load)."""
        if not self.ready or self.runtime is None or self.batcher is None:
            detail = f"model failed to load: {self.load_error}" if self.load_error else "model is loading"
            raise ApiError(503, NOT_READY, detail, {"Retry-After": "5"})
        return self.runtime, self.batcher

    async def prepare(self, data: bytes, runtime: SquidRuntime) -> Prepared:
        """Decode and preprocess in the thread pool (raises ``ImageRejected``, or 503 ``busy``)."""
        if self.decode_budget is None:
            budget_mb, wait_s = self.settings.decode_budget_mb, self.settings.decode_wait_s
            self.decode_budget = DecodeBudget(budget_mb << 20, wait_s)
        pixels = min(declared_pixels(data), self.settings.max_pixels * 4)  # a lying header is refused later
        async with self.decode_budget.reserve(pixels * PEAK_BYTES_PER_PIXEL), self.decode_slots:
            return await run_in_threadpool(
                prepare,
                data,
                runtime.preprocessing,
                self.settings.max_pixels,
                runtime.gate,
                full_resolution=self.settings.decode_full_resolution,
            )


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.squid
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_job_manager(state: StateDep) -> JobManager:
    """The app's job manager (Redis pool, Celery producer), made on first use; 503 without a broker."""
    if state.jobs is None:
        state.jobs = JobManager(state.settings)  # raises JobError(503, "no_broker") when unset
    return state.jobs


JobManagerDep = Annotated[JobManager, Depends(get_job_manager)]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The SQUID_API_KEY value.")
_bearer = HTTPBearer(auto_error=False, description="The SQUID_API_KEY value as a bearer token.")


class _LenientBasic(HTTPBasic):
    """HTTP Basic that yields ``None`` for a malformed header instead of failing the request.

    FastAPI's scheme answers 401 for a broken Basic header even with ``auto_error=False``, which
    would refuse requests to a server that has no API key configured at all.
    """

    async def __call__(self, request: Request) -> HTTPBasicCredentials | None:  # type: ignore[override]
        try:
            return await super().__call__(request)
        except HTTPException:
            return None


_basic = _LenientBasic(
    auto_error=False, realm="squid", description="Any user name, the SQUID_API_KEY value as the password."
)


def require_api_key(
    state: StateDep,
    api_key: Annotated[str | None, Security(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    basic: Annotated[HTTPBasicCredentials | None, Security(_basic)],
) -> None:
    """When ``SQUID_API_KEY`` is set, require it: ``X-API-Key``, ``Authorization: Bearer`` or Basic.

    Basic (any user name, the key as password) is what lets a browser open the web page and the API
    docs of a protected server: it asks once and then sends the credentials with every same-origin
    request the page makes, so the page needs no key handling of its own.
    """
    expected = state.settings.api_key
    if not expected:
        return
    if api_key is not None:
        offered: str | None = api_key
    elif bearer is not None:
        offered = bearer.credentials
    else:
        offered = basic.password if basic is not None else None
    if offered is None or not hmac.compare_digest(_bytes(offered), _bytes(expected)):
        raise ApiError(
            401,
            UNAUTHORIZED,
            "a valid API key is required (header X-API-Key, Authorization: Bearer, or Basic password)",
            {"WWW-Authenticate": 'Basic realm="squid", charset="UTF-8"'},
        )


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


ApiKeyDep = Depends(require_api_key)


UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def require_same_origin(request: Request) -> None:
    """Refuse a state-changing request that a page of another origin made (403 ``cross_origin``).

    A browser that signed in with HTTP Basic sends those credentials with any request to this
    server, a form posted by another site included; browsers also name the page's origin in
    ``Origin`` on every such request, so one that does not match the host addressed was not sent
    by this server's page. Clients other than browsers send no ``Origin`` and are not affected.
    """
    origin = request.headers.get("origin")
    if request.method not in UNSAFE_METHODS or origin is None:
        return
    if urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower():
        raise ApiError(403, CROSS_ORIGIN, "requests that change state must come from this server's own page")
