"""Probes and metrics: ``/healthz`` (process alive), ``/readyz`` (model warmed up), ``/metrics``.

None of them needs the API key: orchestrators and Prometheus call them without credentials.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from service import metrics, readiness
from service.deps import StateDep

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness")
async def healthz(state: StateDep) -> JSONResponse:
    """200 while the process serves; 503 only when the model failed to load (restart me)."""
    if state.load_error:
        return JSONResponse({"status": "failed", "detail": state.load_error}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/readyz", summary="Readiness")
async def readyz(state: StateDep) -> JSONResponse:
    """200 once the model is loaded and warmed up (in every worker process), 503 before or after a failure."""
    if state.ready and state.runtime is not None:
        if readiness.ready_dir() is not None:  # several worker processes under `squid serve`
            workers, workers_ready = state.settings.workers, readiness.ready_processes()
            if workers_ready < workers:
                body = {"status": "loading", "workers_ready": workers_ready, "workers": workers}
                return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
        meta = state.runtime.metadata
        body = {"status": "ready", "model": meta.model_name, "model_version": meta.model_version}
        return JSONResponse(body)
    if state.load_error:
        return JSONResponse({"status": "failed", "detail": state.load_error}, status_code=503)
    return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
