"""The FastAPI application: ``create_app()`` (uvicorn factory) wires routes, middleware and startup.

Startup does not block the server: ``/healthz`` answers at once while the model loads and warms up in
the background, and ``/readyz`` turns 200 when it is done.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import service.api.jobs
from model.runtime import SquidRuntime
from service import metrics
from service.api import docs, health, model_info, node, page, score, worklist
from service.deps import AppState, require_api_key, require_same_origin
from service.errors import INTERNAL_ERROR, error_response, install_error_handlers
from service.http_methods import HeadAndOptions
from service.logs import capture_warnings, request_id_var, sanitise_request_id
from service.settings import Settings, get_settings

log = logging.getLogger("squid.app")
access_log = logging.getLogger("squid.access")

PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def create_app(settings: Settings | None = None, runtime: SquidRuntime | None = None) -> FastAPI:
    """The API. ``runtime`` lets tests and embedders pass an opened model instead of loading one."""
    state = AppState(settings=settings or get_settings(), runtime=runtime)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        capture_warnings()
        loader = asyncio.create_task(state.load(), name="squid-model-load")
        try:
            yield
        finally:
            loader.cancel()
            await asyncio.gather(loader, return_exceptions=True)
            await state.close()
            metrics.mark_process_dead()

    app = FastAPI(
        title="SQUID chest X-ray anomaly scoring",
        version=_package_version(),
        description=(
            "Unsupervised anomaly scores for frontal chest radiographs (DICOM, PNG, JPEG). "
            "Research use only: not a medical device."
        ),
        lifespan=lifespan,
        openapi_url=None,  # served by service.api.docs, behind the API key
        docs_url=None,
        redoc_url=None,
    )
    app.state.squid = state
    install_error_handlers(app)
    protected = [Depends(require_api_key), Depends(require_same_origin)]
    app.include_router(health.router)
    app.include_router(score.router, dependencies=protected)
    app.include_router(model_info.router, dependencies=protected)
    app.include_router(service.api.jobs.router, dependencies=protected)
    app.include_router(worklist.router, dependencies=protected)
    app.include_router(node.router, dependencies=protected)
    app.include_router(page.router, dependencies=protected)
    app.include_router(docs.router, dependencies=protected)
    app.add_middleware(HeadAndOptions)
    app.add_middleware(RequestMiddleware)  # added last: outermost, so it sees every answer
    return app


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("squid-cxr")
    except PackageNotFoundError:
        return "0.0.0"


class RequestMiddleware:
    """Per request: an id, the in-flight gauge, latency/count metrics by route template, one access
    log line, and a logged JSON 500 for any exception a route did not turn into a response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        offered = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = sanitise_request_id(offered) or uuid.uuid4().hex
        token = request_id_var.set(request_id)
        method = scope.get("method", "GET") if scope.get("method") in METHODS else "other"
        status = 500
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        metrics.HTTP_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("unhandled error", extra={"endpoint": _endpoint(scope), "method": method})
            if not started:
                response = error_response(500, INTERNAL_ERROR, f"internal error (request id {request_id})")
                await response(scope, receive, send_wrapper)
        finally:
            metrics.HTTP_IN_FLIGHT.dec()
            endpoint = _endpoint(scope)
            elapsed = time.perf_counter() - start
            labels = (endpoint, method, str(status))
            metrics.HTTP_REQUESTS.labels(*labels).inc()
            metrics.HTTP_LATENCY.labels(*labels).observe(elapsed)
            level = logging.DEBUG if endpoint in PROBES and status < 400 else logging.INFO
            access_log.log(
                level,
                "request",
                extra={
                    "method": method,
                    "endpoint": endpoint,
                    "status": status,
                    "duration_ms": round(elapsed * 1e3, 2),
                },
            )
            request_id_var.reset(token)


def _endpoint(scope: Scope) -> str:
    """The route template (``/jobs/{job_id}``), ``/static`` for files, else ``unmatched``: raw paths
    would let any client create unbounded label values. Call after the app ran (the router sets
    ``scope["route"]`` for API routes)."""
    route = scope.get("route")
    if isinstance(getattr(route, "path", None), str):
        return str(route.path)  # type: ignore[union-attr]
    app = scope.get("app")
    for candidate in getattr(getattr(app, "router", None), "routes", ()):
        path = getattr(candidate, "path", None)
        if not isinstance(path, str):
            continue
        try:
            match, _ = candidate.matches(scope)
        except Exception:  # a malformed path must not break the metrics
            continue
        if match != Match.NONE:
            return path or "unmatched"
    return "unmatched"
