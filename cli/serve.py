"""``squid serve``: the HTTP API under uvicorn."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the serving commands to the ``squid`` app."""
    app.command()(serve)


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [default: $SQUID_HOST or 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: $SQUID_PORT or 8000]")] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes [default: $SQUID_WORKERS or 1]")
    ] = None,
    model: Annotated[
        Path | None, typer.Option(help="ONNX artifact [default: $SQUID_MODEL_PATH or the shipped one]")
    ] = None,
    threshold: Annotated[float | None, typer.Option(help="Override the artifact's threshold.")] = None,
    log_level: Annotated[
        str | None, typer.Option(help="Log level [default: $SQUID_LOG_LEVEL or INFO]")
    ] = None,
) -> None:
    """Serve POST /score, the web page, /model, /healthz, /readyz and /metrics (settings: SQUID_*)."""
    import uvicorn
    from pydantic import ValidationError

    from model.artifact import ArtifactError
    from model.artifact_source import resolve_artifact
    from service.http_guard import PROTOCOL
    from service.logs import logging_config
    from service.readiness import READY_DIR_ENV
    from service.settings import get_settings

    # CLI options become SQUID_* variables so every worker process builds the same Settings.
    overrides = {"SQUID_MODEL_PATH": model, "SQUID_THRESHOLD": threshold, "SQUID_LOG_LEVEL": log_level}
    for name, value in overrides.items():
        if value is not None:
            os.environ[name] = str(value)
    get_settings.cache_clear()
    try:
        settings = get_settings()
    except ValidationError as exc:
        typer.secho(f"error: invalid settings: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from exc
    try:
        artifact = resolve_artifact(settings.model_path)  # a URL is downloaded once, here
    except ArtifactError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from exc
    if not Path(artifact).is_file():
        typer.secho(f"error: model artifact not found: {artifact}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    processes = workers or settings.workers
    os.environ["SQUID_WORKERS"] = str(processes)  # /readyz waits for this many warm processes
    scratch: list[str] = []
    if processes > 1:
        scratch.append(tempfile.mkdtemp(prefix="squid-ready-"))
        os.environ[READY_DIR_ENV] = scratch[-1]
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            scratch.append(tempfile.mkdtemp(prefix="squid-metrics-"))
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = scratch[-1]
    try:
        uvicorn.run(
            "service.app:create_app",
            factory=True,
            host=host or settings.host,
            port=port or settings.port,
            workers=processes,
            log_config=logging_config(settings.log_level),
            access_log=False,
            proxy_headers=False,
            server_header=False,
            http=PROTOCOL,
            h11_max_incomplete_event_size=settings.max_header_kb * 1024 + 1024,
            timeout_keep_alive=int(max(1, settings.keep_alive_s)),
        )
    finally:
        for folder in scratch:
            shutil.rmtree(folder, ignore_errors=True)
