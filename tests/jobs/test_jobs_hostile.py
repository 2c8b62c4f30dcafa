"""Hostile and clumsy job inputs on real processes (Redis, ``squid worker``, ``squid serve``): every
job ends, the worker does not spin, nothing is left on disk after a cancel, no 5xx."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from service.jobs.celery_config import PLAN_TASK, make_celery
from service.jobs.state import JobState
from service.settings import Settings
from tests.jobs.jobs_support import (
    ApiStack,
    RedisServer,
    api_stack,
    job_env,
    wait_for,
    wait_job,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE = REPO_ROOT / "samples" / "normal-IM-0372-0001-MONOCHROME1.dcm"


Hostile = ApiStack


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    tmp = tmp_path_factory.mktemp("hostile")
    redis_server = RedisServer(tmp / "redis", persistent=False).start()
    limits = {"SQUID_TASK_TIME_LIMIT_S": "120", "SQUID_VISIBILITY_TIMEOUT_S": "150"}
    env = job_env(tmp, redis_server.url, SQUID_MAX_ZIP_MB="8", SQUID_MAX_ZIP_EXTRACT_MB="4096", **limits)
    Path(env["SQUID_IMPORT_ROOT"]).mkdir(parents=True)
    with api_stack(tmp, redis_server, env) as running:
        yield running


def rows_of(http: httpx.Client, job_id: str) -> dict[str, dict[str, Any]]:
    text = http.get(f"/jobs/{job_id}/results", params={"format": "jsonl"}).text
    return {row["path"]: row for row in map(json.loads, text.splitlines())}


def zip_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def post_zip(http: httpx.Client, data: bytes) -> dict[str, Any]:
    response = http.post("/jobs", content=data, headers={"content-type": "application/zip"})
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def test_a_folder_with_a_symlink_loop_ends_with_rows(hostile: Hostile) -> None:
    folder = hostile.import_root / "loops"
    folder.mkdir()
    shutil.copy(SAMPLE, folder / "image.dcm")
    os.symlink("lb", folder / "la")
    os.symlink("la", folder / "lb")
    (folder / "sub").mkdir()
    os.symlink("../sub", folder / "sub" / "again")  # a folder link back into the tree
    for path in ("loops", "."):
        job = hostile.http.post("/jobs", json={"path": path})
        assert job.status_code == 202, job.text
        final = wait_job(hostile.http, job.json()["id"])
        assert final["state"] == "succeeded", final
        rows = rows_of(hostile.http, final["id"])
        prefix = "loops/" if path == "." else ""
        assert rows[f"{prefix}la"]["reason"] == rows[f"{prefix}lb"]["reason"] == "symlink_loop"
        assert rows[f"{prefix}image.dcm"]["status"] == "scored"


def test_a_zip_the_file_system_cannot_hold_ends_with_rows(hostile: Hostile) -> None:
    dicom = SAMPLE.read_bytes()
    long_name = "n" * 300 + ".dcm"
    data = zip_bytes([("x", b"junk"), ("x/y.dcm", dicom), (long_name, dicom), ("ok.dcm", dicom)])
    final = wait_job(hostile.http, post_zip(hostile.http, data)["id"])
    assert final["state"] == "succeeded", final
    rows = rows_of(hostile.http, final["id"])
    assert rows["x/y.dcm"]["reason"] == "path_conflict" and rows["x/y.dcm"]["status"] == "failed"
    assert rows[long_name]["reason"] == "name_too_long"
    assert rows["ok.dcm"]["status"] == "scored"
    job_dir = hostile.results_dir / final["id"]
    assert not (job_dir / "input").exists() and not (job_dir / "upload.zip").exists()


def test_duplicate_zip_members_are_reported_not_lost(hostile: Hostile) -> None:
    dicom = SAMPLE.read_bytes()
    final = wait_job(
        hostile.http, post_zip(hostile.http, zip_bytes([("a.dcm", dicom), ("a.dcm", b"x")]))["id"]
    )
    rows = rows_of(hostile.http, final["id"])
    assert rows["a.dcm"]["status"] == "scored"
    assert [row["reason"] for path, row in rows.items() if path != "a.dcm"] == ["path_conflict"]


def test_csv_cells_that_look_like_formulas_are_quoted(hostile: Hostile) -> None:
    name = "=cmd|' /C calc'!A0.dcm"
    final = wait_job(hostile.http, post_zip(hostile.http, zip_bytes([(name, b"not an image")]))["id"])
    text = hostile.http.get(f"/jobs/{final['id']}/results", params={"format": "csv"}).text
    first_cells = [line.split(",")[0] for line in text.splitlines()[1:]]
    assert first_cells and not any(cell.lstrip('"').startswith("=") for cell in first_cells), text
    assert rows_of(hostile.http, final["id"])[name]["path"] == name  # JSON keeps the real name


def test_planning_that_always_fails_ends_the_job(hostile: Hostile) -> None:
    """A job whose folder cannot be planned (here: its results folder is a file) fails after
    SQUID_MAX_DELIVERIES tries instead of being re-queued forever."""
    settings = Settings(
        broker_url=hostile.env["SQUID_BROKER_URL"],
        queue=hostile.env["SQUID_QUEUE"],
        key_prefix=hostile.env["SQUID_KEY_PREFIX"],
        visibility_timeout_s=150,
        task_time_limit_s=120,
    )
    blocker = hostile.tmp / "not-a-folder"
    blocker.write_text("x")
    state = JobState(redis.Redis.from_url(settings.broker_url), settings.key_prefix)
    job_id = "f" * 32
    fields = {"id": job_id, "source": "path", "label": "x", "root": str(hostile.import_root)}
    state.create(job_id, {**fields, "job_dir": str(blocker / "job"), "check_import_root": "0"})
    make_celery(settings).send_task(PLAN_TASK, args=[job_id], queue=settings.queue)

    def ended() -> dict[str, str] | None:
        job = state.get(job_id)
        return job if job and job["state"] == "failed" else None

    job = wait_for(ended, 60, "the unplannable job to fail")
    assert job["error_reason"] == "planning_failed"
    time.sleep(1.0)
    assert hostile.worker.logs().count(f"planning job {job_id} failed; requeued") <= 3


def test_a_cancelled_zip_job_leaves_nothing_on_disk(hostile: Hostile) -> None:
    big = zip_bytes([(f"zeros-{i}.dcm", bytes(128 << 20)) for i in range(4)])  # 512 MB inflated
    assert len(big) < 8 << 20
    job = post_zip(hostile.http, big)
    time.sleep(1.5)
    cancelled = hostile.http.delete(f"/jobs/{job['id']}")
    assert cancelled.status_code in (200, 409), cancelled.text
    job_dir = hostile.results_dir / job["id"]

    def clean() -> bool:
        return not (job_dir / "input").exists() and not (job_dir / "upload.zip").exists()

    wait_for(clean, 60, "the cancelled job's files to be removed")
    time.sleep(2.0)  # the worker, if it was extracting, has stopped and does not re-create them
    assert clean(), sorted(p.name for p in job_dir.iterdir())


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("a" * 256, "invalid_path"),
        ("x/" * 3000, "invalid_path"),
        ("\ud800", None),
        ("loops/la", "symlink_loop"),
    ],
)
def test_hostile_job_paths_are_4xx(hostile: Hostile, path: str, reason: str | None) -> None:
    if reason == "symlink_loop" and not (hostile.import_root / "loops").is_symlink():
        (hostile.import_root / "loops").mkdir(exist_ok=True)
        for name, target in (("la", "lb"), ("lb", "la")):
            if not (hostile.import_root / "loops" / name).is_symlink():
                os.symlink(target, hostile.import_root / "loops" / name)
    body = json.dumps({"path": path}).encode()  # "\ud800" travels as its JSON escape
    response = hostile.http.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    if reason:
        assert response.json()["error"]["reason"] == reason
    assert path[:40] not in hostile.api.logs()


def test_extraction_reports_members_the_disk_cannot_hold_and_stops_on_cancel(tmp_path: Path) -> None:
    from service.jobs.archive import ArchiveError, extract_archive

    upload = tmp_path / "upload.zip"
    upload.write_bytes(
        zip_bytes([("x", b"1"), ("x/y.dcm", b"2"), ("n" * 300, b"3"), ("x", b"4"), ("ok", b"5")])
    )
    skipped: list[tuple[str, str, str]] = []
    extract_archive(upload, tmp_path / "out", 1 << 20, skipped=skipped)
    assert [(name[:5], reason) for name, reason, _ in skipped] == [
        ("x/y.d", "path_conflict"),
        ("nnnnn", "name_too_long"),
        ("x#3", "path_conflict"),
    ]
    assert (tmp_path / "out" / "ok").stat().st_mode & 0o777 == 0o600  # results are 0600 too
    with pytest.raises(ArchiveError) as stopped:
        extract_archive(upload, tmp_path / "again", 1 << 20, should_stop=lambda: True)
    assert stopped.value.reason == "cancelled" and not list((tmp_path / "again").iterdir())


def test_a_zip_job_whose_state_redis_lost_keeps_no_upload(hostile: Hostile) -> None:
    """Last in this module: it empties Redis. A job that can never run again frees its disk."""
    hostile.worker.freeze()
    try:
        job = post_zip(hostile.http, zip_bytes([("a.dcm", SAMPLE.read_bytes())]))
        job_dir = hostile.results_dir / job["id"]
        assert (job_dir / "upload.zip").is_file()
        hostile.redis.restart()  # not persistent: the queue and the job state are gone
        lost = wait_job(hostile.http, job["id"], timeout=60)
    finally:
        hostile.worker.thaw()
    assert lost["state"] == "failed" and lost["error"]["reason"] == "state_lost"
    assert not (job_dir / "upload.zip").exists() and not (job_dir / "input").exists()
