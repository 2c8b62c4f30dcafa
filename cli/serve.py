"""``squid serve``: the HTTP API under uvicorn."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the serving commands to the ``squid`` app."""
