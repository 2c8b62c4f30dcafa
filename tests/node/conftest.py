"""Fixtures of the node tests that need no PACS: a ``squid listen`` launcher and a real DX image."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.net_support import free_port
from tests.node.orthanc_support import NodeProcess

SENDERS = ("STORESCU", "ECHOSCU")  # the calling AE titles the launched nodes allow


@pytest.fixture
def dx_file(shared_data: Path) -> Path:
    return shared_data / "dicom" / "highdicom" / "dx_image.dcm"


@pytest.fixture
def launch_node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Starts ``squid listen`` with no destination, allowing :data:`SENDERS`; stops every node after."""
    started: list[NodeProcess] = []

    def start(prefix: Sequence[str] = (), **env: str) -> NodeProcess:
        settings = {
            "SQUID_DICOM_ALLOWED_AES": json.dumps(SENDERS),
            "SQUID_DICOM_METRICS_PORT": str(free_port()),
            **env,
        }
        node = NodeProcess(tmp_path / f"node-{len(started)}", free_port(), settings)
        started.append(node)
        return node.start(prefix)

    yield start
    for node in started:
        node.stop()
