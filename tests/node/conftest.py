"""Fixtures of the node tests that need no PACS: a ``squid listen`` launcher and a real DX image."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import DigitalXRayImageStorageForPresentation

from tests.jobs.jobs_support import REPO_ROOT
from tests.net_support import free_port
from tests.node.orthanc_support import NodeProcess

SENDERS = ("STORESCU", "ECHOSCU")  # the calling AE titles the launched nodes allow


@pytest.fixture
def dx_file(tmp_path: Path) -> Path:
    """A real frontal chest film as a DX instance (the repository's sample CR, relabelled): what the
    domain gate lets through. (The highdicom DX in the shared data is a dog's thorax, which the gate
    rightly refuses: tests/node/test_node_orthanc.py sends it as an out-of-domain image.)"""
    ds = dcmread(REPO_ROOT / "samples" / "normal-IM-0372-0001-MONOCHROME1.dcm")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    path = tmp_path / "chest-dx.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


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
