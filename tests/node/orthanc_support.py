"""Real processes for the DICOM node tests: a Debian Orthanc as the PACS, ``squid listen`` as the node.

Orthanc runs from a generated configuration in a temporary folder, on free loopback ports, with the
DICOMweb plugin; it knows the node as the modality ``squid``. The node is a real ``squid listen``
process (in-process scoring, no broker), so SIGKILL tests kill what production runs.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.jobs.jobs_support import REPO_ROOT, wait_for
from tests.net_support import free_port, metric_value, stop_process_group

ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
requires_orthanc = pytest.mark.skipif(
    ORTHANC is None or not DICOMWEB_PLUGIN.exists(),
    reason="Orthanc with its DICOMweb plugin not installed (Debian orthanc, orthanc-dicomweb; "
    "scripts/test.sh installs them)",
)
NODE_AE = "SQUID"


@dataclass
class Orthanc:
    """One Orthanc server; ``node_port`` is where its modality ``squid`` (our node) listens."""

    workdir: Path
    node_port: int
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self) -> Orthanc:
        assert ORTHANC is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "squid-test",
            "StorageDirectory": str(self.workdir / "db"),
            "IndexDirectory": str(self.workdir / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "OverwriteInstances": True,
            "DicomModalities": {"squid": [NODE_AE, "127.0.0.1", self.node_port]},
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config))
        log = (self.workdir / "orthanc.log").open("ab")
        self.process = subprocess.Popen(
            [ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

        def up() -> bool:
            try:
                return httpx.get(f"{self.url}/system", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60, "Orthanc")
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process, grace=10)

    def upload(self, path: Path) -> dict[str, Any]:
        """POST /instances: returns Orthanc's answer (its IDs of the instance and its study)."""
        answer = httpx.post(f"{self.url}/instances", content=path.read_bytes(), timeout=60)
        answer.raise_for_status()
        return dict(answer.json())

    def send_to_node(self, orthanc_id: str) -> None:
        """Orthanc's own C-STORE SCU sends a study (or instance) to the node, as a PACS routing rule does."""
        answer = httpx.post(f"{self.url}/modalities/squid/store", content=orthanc_id, timeout=120)
        answer.raise_for_status()

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        """Every instance of a study with its main tags (SOPClassUID and SOPInstanceUID among them)."""
        query = {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True}
        answer = httpx.post(f"{self.url}/tools/find", json=query, timeout=30)
        answer.raise_for_status()
        return list(answer.json())

    def instance_file(self, orthanc_id: str) -> bytes:
        answer = httpx.get(f"{self.url}/instances/{orthanc_id}/file", timeout=30)
        answer.raise_for_status()
        return answer.content


@dataclass
class NodeProcess:
    """A ``squid listen`` child with its own spool and results folder."""

    workdir: Path
    port: int
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    def start(self, prefix: Sequence[str] = (), **settings: str) -> NodeProcess:
        """Start ``squid listen`` (``prefix``: a command it runs under, e.g. ``unshare``) and wait until
        it says it listens and its port takes a connection (no echo: the node may admit nobody)."""
        env = {
            **os.environ,
            "SQUID_DICOM_SPOOL_DIR": str(self.workdir / "spool"),
            "SQUID_RESULTS_DIR": str(self.workdir / "results"),
            "SQUID_DICOM_QUIET_SECONDS": "1",
            "SQUID_DICOM_RETRY_SECONDS": "1",
            "SQUID_INTRA_OP_THREADS": "1",
            **self.env,
            **settings,
        }
        env.pop("SQUID_BROKER_URL", None)
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "node.log").open("ab")
        listen = [sys.executable, "-m", "cli.main", "listen", "--port", str(self.port), "--ae-title", NODE_AE]
        self.process = subprocess.Popen(
            [*prefix, *listen],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self._listening, 120, "squid listen")
        return self

    def _listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"squid listen exited: {self.log()[-2000:]}")
        if "listening as" not in self.log():
            return False
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def log(self) -> str:
        path = self.workdir / "node.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 9)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process, grace=20)

    def spool_files(self, folder: str) -> list[Path]:
        return sorted((self.workdir / "spool" / folder).rglob("*.dcm"))

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        port = self.env["SQUID_DICOM_METRICS_PORT"]
        return metric_value(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text, name, labels)


def echo(host: str, port: int, called: str, calling: str = "ECHOSCU") -> bool:
    """A C-ECHO: True when the association is accepted and the echo succeeds."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.network_timeout = 5
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and int(status.Status) == 0
