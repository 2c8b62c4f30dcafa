"""The compose stack run natively (redis, api, worker, DICOM node, prometheus) once per session, after
traffic: scores, a rejected upload, a batch job and one instance stored into the DICOM node.

The stack is what ``docker-compose.yml`` describes (deploy/native_stack.py reads it); the test only
chooses the compose variables a user would set: the import folder (a PACS export), the results
folder, and ``SQUID_ENV_FILE`` with a threshold that flags part of the test images, so the flagged
counter exists for the metric name checks.
"""

from __future__ import annotations

import json
import shutil
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from deploy_support import INSTALL_HINT, load_script

N_IMAGES = 6
JOB_FILES = 5


@dataclass
class LiveStack:
    stack: Any  # native_stack.NativeStack
    workdir: Path
    threshold: float
    scores: list[float]
    job: dict[str, Any]
    rejected_status: int
    stored_status: int
    notes: list[str] = field(default_factory=list)

    def api_metrics(self) -> str:
        return _get_text(f"{self.stack.api_url}/metrics")

    def worker_metrics(self) -> str:
        return _get_text(self.stack.worker_metrics_url)

    def node_metrics(self) -> str:
        return _get_text(self.stack.node_metrics_url)

    def prometheus(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.stack.prometheus_url}{path}", timeout=30) as response:
            return json.load(response)


def _get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode("utf-8"))


def _require(binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed (CI: {INSTALL_HINT[binary]})")


def _local_scores(images: list[bytes]) -> list[float]:
    """Scores of the test images from the shipped artifact in this process (threshold choice only)."""
    from model.runtime import SquidRuntime
    from model.steps import infer, prepare

    runtime = SquidRuntime(intra_op_threads=1)
    prepared = [prepare(data, runtime.preprocessing, 100_000_000) for data in images]
    results, _ = infer(runtime, prepared)
    return [r.score for r in results]


@pytest.fixture(scope="session")
def native_stack_module() -> Any:
    return load_script("native_stack")


@pytest.fixture(scope="session")
def live_stack(tmp_path_factory: pytest.TempPathFactory, native_stack_module: Any) -> Iterator[LiveStack]:
    for binary in ("redis-server", "prometheus"):
        _require(binary)
    ns = native_stack_module
    workdir = tmp_path_factory.mktemp("native-stack")
    import_dir = workdir / "pacs-export"
    job_dir = import_dir / "study-batch"
    job_dir.mkdir(parents=True)
    images = [ns.synthetic_chest(seed) for seed in range(N_IMAGES)]
    for index in range(JOB_FILES):
        (job_dir / f"IM{index:04d}.png").write_bytes(images[index % N_IMAGES])
    (job_dir / "README.txt").write_text("not an image\n", encoding="utf-8")

    scores = sorted(_local_scores(images))
    threshold = round((scores[N_IMAGES // 2 - 1] + scores[N_IMAGES // 2]) / 2, 6)
    env_file = workdir / "squid.env"
    env_file.write_text(
        f"# test settings\nSQUID_THRESHOLD={threshold}\nSQUID_LOG_LEVEL=INFO\n"
        # the node admits nobody until told whom (issue 25, 13): the test's C-STORE calls as STORESCU
        'SQUID_DICOM_ALLOWED_AES=["STORESCU"]\n',
        encoding="utf-8",
    )
    variables = {
        "SQUID_IMPORT_DIR": str(import_dir),
        "SQUID_RESULTS_VOLUME": str(workdir / "results"),
        "SQUID_MODELS_DIR": str(workdir / "models"),
        "SQUID_ENV_FILE": str(env_file),
    }
    stack = ns.NativeStack(workdir, variables)
    stack.start()
    try:
        status = [ns.post(f"{stack.api_url}/score", data, "image/png")[0] for data in images]
        assert status == [200] * N_IMAGES, status
        rejected, _ = ns.post(
            f"{stack.api_url}/score", b"definitely not an image", "application/octet-stream"
        )
        code, body = ns.post(
            f"{stack.api_url}/jobs", json.dumps({"path": job_dir.name}).encode(), "application/json"
        )
        assert code == 202, body
        job = ns.wait_for_job(stack.api_url, json.loads(body)["id"], timeout=120)
        called = stack.processes["listener"].env.get("SQUID_DICOM_AE_TITLE", "SQUID")
        [stored] = ns.c_store(stack.dicom_port, [ns.synthetic_dicom(N_IMAGES)], called)
        yield LiveStack(stack, workdir, threshold, scores, job, rejected, stored)
    except BaseException:
        for process in stack.processes.values():
            print(f"---- {process.name} log ----\n{process.logs()}")
        raise
    finally:
        stack.stop()
