"""A finished job that Redis expired leaves no upload or extracted files behind (real Redis, real TTL).

Workers drop a zip job's inputs when they end it; one that dies between ending the job and that
clean-up leaves them. Expiry is a Redis TTL with no process of its own, so the manager removes them
when it next meets the expired job (reading ``job.json``).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.jobs.manager import JobManager
from service.jobs.state import FAILED
from service.settings import Settings
from tests.jobs.jobs_support import RedisServer, wait_for

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "normal-IM-0372-0001-MONOCHROME1.dcm"


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[JobManager]:
    server = RedisServer(tmp_path / "redis", persistent=False).start()
    try:
        settings = Settings(
            broker_url=server.url,
            results_dir=tmp_path / "results",
            key_prefix="expiry",
            queue="expiry-nobody-listens",
        )
        yield JobManager(settings)
    finally:
        server.kill()


def test_an_expired_zip_job_keeps_neither_upload_nor_extracted_files(manager: JobManager) -> None:
    job_id, job_dir = manager.new_job()
    with zipfile.ZipFile(job_dir / "upload.zip", "w") as archive:
        archive.write(SAMPLE, "a.dcm")
    manager.submit_zip(job_id, job_dir)
    (job_dir / "input").mkdir()
    (job_dir / "input" / "a.dcm").write_bytes(SAMPLE.read_bytes())  # what extraction wrote

    # A worker ends the job (with the shortest TTL) and dies before removing the inputs.
    assert manager.state.close(job_id, FAILED, 1, job_dir, ("planning_failed", "worker died"))
    assert (job_dir / "upload.zip").is_file() and (job_dir / "input" / "a.dcm").is_file()

    wait_for(lambda: manager.state.get(job_id) is None, 30, "Redis to expire the job", interval=0.1)
    view = manager.get(job_id)
    assert view.state == FAILED and view.error == {"reason": "planning_failed", "detail": "worker died"}
    assert not (job_dir / "upload.zip").exists() and not (job_dir / "input").exists()
    assert (job_dir / "job.json").is_file()  # the outcome stays readable


def test_an_expired_folder_job_leaves_the_scanned_folder_alone(manager: JobManager, tmp_path: Path) -> None:
    folder = tmp_path / "import" / "study"
    folder.mkdir(parents=True)
    (folder / "a.dcm").write_bytes(SAMPLE.read_bytes())
    job = manager.submit_folder(folder, "study", check_import_root=False)
    job_dir = manager.job_dir(job.id)
    assert manager.state.close(job.id, FAILED, 1, job_dir, ("planning_failed", "worker died"))
    wait_for(lambda: manager.state.get(job.id) is None, 30, "Redis to expire the job", interval=0.1)
    assert manager.get(job.id).state == FAILED
    assert (folder / "a.dcm").is_file()
