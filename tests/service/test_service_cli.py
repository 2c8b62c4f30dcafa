"""``squid serve``: refuses a missing artifact; several workers are ready together and share metrics."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dicom_factory import make_dicom
from http_support import Server, chest_like, metric_value, serving
from typer.testing import CliRunner

from cli.main import app
from service import readiness
from service.settings import get_settings


@pytest.fixture
def clean_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``serve`` writes its options to SQUID_* variables: restore them and the settings cache."""
    for name in ("SQUID_MODEL_PATH", "SQUID_THRESHOLD", "SQUID_LOG_LEVEL"):
        monkeypatch.setenv(name, "")  # records the original state, restored at teardown
        monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_serve_refuses_a_missing_artifact(clean_settings: None, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["serve", "--model", str(tmp_path / "missing.onnx")])
    assert result.exit_code == 2
    assert "model artifact not found" in result.output


def test_serve_refuses_invalid_settings(clean_settings: None) -> None:
    result = CliRunner().invoke(app, ["serve", "--threshold", "1.5"])
    assert result.exit_code == 2
    assert "invalid settings" in result.output


def test_readiness_counts_the_markers_of_live_processes_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(readiness.READY_DIR_ENV, str(tmp_path / "ready"))
    assert readiness.ready_processes() == 0
    readiness.mark_ready()
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    (tmp_path / "ready" / f"ready-{int(exited.stdout)}").touch()  # a worker that died while ready
    (tmp_path / "ready" / "ready-garbage").touch()
    assert readiness.ready_processes() == 1
    readiness.mark_not_ready()
    assert readiness.ready_processes() == 0


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(
        tmp_path_factory.mktemp("workers") / "server.log", SQUID_WORKERS="2", SQUID_INTRA_OP_THREADS="1"
    ) as running:
        yield running


def test_two_workers_share_one_metrics_view(two_workers: Server) -> None:
    """Ready means every process is warm: no request right after /readyz meets a loading worker."""
    data = make_dicom(chest_like(96, 96), bits_stored=12)
    scores = set()
    for _ in range(6):  # new connection each time: the kernel spreads them over the workers
        response = httpx.post(f"{two_workers.url}/score", files={"file": ("a", data)}, timeout=60)
        assert response.status_code == 200
        scores.add(response.json()["score"])
    assert len(scores) == 1
    text = httpx.get(f"{two_workers.url}/metrics", timeout=30).text
    assert metric_value(text, "squid_anomaly_score_count") == 6
    assert metric_value(text, "squid_http_requests_total", {"endpoint": "/score", "status": "200"}) == 6
    assert metric_value(text, "squid_model_ready") == 1
    events = [str(record["event"]) for record in two_workers.log_records()]
    assert len({e for e in events if e.startswith("Started server process")}) == 2
