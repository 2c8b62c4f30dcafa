"""``squid batch`` and ``squid worker``: batch scoring in-process or on Celery workers."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the batch commands to the ``squid`` app."""
