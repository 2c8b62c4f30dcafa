"""``squid listen``: the DICOM node (Storage SCP in, SR + SC back to the PACS)."""

from __future__ import annotations

import signal
from typing import Annotated

import typer


def listen(
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="DIMSE port (default $SQUID_DICOM_PORT, 11112).")
    ] = None,
    ae_title: Annotated[
        str | None, typer.Option(help="Our AE title (default $SQUID_DICOM_AE_TITLE, SQUID).")
    ] = None,
) -> None:
    """Receive studies by C-STORE, score each once it is quiet, send its SR and SC back."""
    import re

    from service.node.node import Node
    from service.settings import AE_TITLE, get_settings

    settings = get_settings()
    try:
        if ae_title is not None:
            if not re.match(AE_TITLE, ae_title):
                raise ValueError("--ae-title must be 1 to 16 printable ASCII characters")
            settings = settings.model_copy(update={"dicom_ae_title": ae_title})
        node = Node(settings, settings.dicom_ae_title, port or settings.dicom_port)
        node.start()
    except (ValueError, OSError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from exc

    def stop(signum: int, frame: object) -> None:
        node.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    typer.echo(
        f"listening as {settings.dicom_ae_title} on {settings.dicom_host}:{node.port}; "
        f"spool {node.spool.root}; destinations: {', '.join(sorted(node.senders)) or 'none'}",
        err=True,
    )
    node.wait()
    node.stop()


def register(app: typer.Typer) -> None:
    """Add the node command to the ``squid`` app."""
    app.command()(listen)
