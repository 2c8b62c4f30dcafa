"""A results folder that fills up or cannot be written, on real processes: a private redis-server,
``squid worker``, ``squid serve`` and ``squid batch``, results on a size-limited or read-only tmpfs.

A full disk is not a lost worker: the job must fail with its own reason after retries that back off,
never end ``succeeded`` with ``worker_lost`` rows; a folder the service cannot write is a 503 with a
reason, and ``squid batch`` says so in one line.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.jobs.jobs_support import ApiStack, RedisServer, api_stack, job_env, run_cli, wait_job
from tests.jobs.limits_support import fill, read_only_folder, remount, require_root, small_filesystem
from tests.jobs.pacs_tree import build_bulk_tree

pytestmark = pytest.mark.slow  # its own redis-server, worker and API, and tmpfs mounts

FILES = 120  # 60 DICOMs (each gets an SR and a secondary capture) and 60 JPEGs
RETRIES = 3
BACKOFF_S = 0.5
SMALL_MB = 3  # the job's own files fit; its DICOM results (a 1.5 MB capture per DICOM) do not


@pytest.fixture(scope="module")
def stack(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    require_root("results on a size-limited or read-only file system")
    tmp = tmp_path_factory.mktemp("storage")
    server = RedisServer(tmp / "redis", persistent=False).start()
    settings = {"SQUID_STORAGE_RETRIES": str(RETRIES), "SQUID_STORAGE_BACKOFF_S": str(BACKOFF_S)}
    env = job_env(tmp, server.url, **settings)
    build_bulk_tree(Path(env["SQUID_IMPORT_ROOT"]) / "bulk", shared_data, FILES)
    Path(env["SQUID_RESULTS_DIR"]).mkdir(parents=True)
    with api_stack(tmp, server, env) as running:
        yield running


def test_a_full_results_disk_fails_the_job_with_its_reason_after_backing_off(stack: ApiStack) -> None:
    with small_filesystem(stack.results_dir, SMALL_MB):
        response = stack.http.post("/jobs", json={"path": "bulk", "dicom_out": True})
        assert response.status_code == 202, response.text
        final = wait_job(stack.http, response.json()["id"])
        assert final["state"] == "failed", final
        assert final["error"]["reason"] == "results_disk_full", final
        assert "free" in final["error"]["detail"], final
        assert final["chunks_redelivered"] == 0, "a full disk is not a lost worker"
        events = final["events"]
        assert [event["event"] for event in events] == ["results_disk_full"] * (RETRIES + 1), events
        delays = [event["retry_in_s"] for event in events]
        assert delays == [BACKOFF_S * 2**n for n in range(RETRIES)] + [None], events
        for before, after, delay in zip(events, events[1:], delays, strict=False):
            gap = (datetime.fromisoformat(after["at"]) - datetime.fromisoformat(before["at"])).total_seconds()
            assert gap >= delay * 0.8, f"written again {gap:.2f} s after a {delay} s back-off"
        assert stack.http.get(f"/jobs/{final['id']}/results").status_code == 409

        # Room again: the same folder submitted again succeeds, every file with a row.
        remount(stack.results_dir, "size=256m")
        again = stack.http.post("/jobs", json={"path": "bulk", "dicom_out": True}).json()
        done = wait_job(stack.http, again["id"])
        assert done["state"] == "succeeded", (done["error"], done["events"])
        assert done["total"] == done["scored"] == FILES, done
        assert done["failures"] == {}, done


def zip_of_a_file() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.txt", b"not an image")
    return buffer.getvalue()


@pytest.mark.parametrize("trouble", ["read-only", "full"])
def test_post_jobs_when_the_results_folder_cannot_be_written_is_a_503_with_a_reason(
    stack: ApiStack, trouble: str
) -> None:
    reason = {"read-only": "results_not_writable", "full": "results_disk_full"}[trouble]
    with small_filesystem(stack.results_dir, 1):
        if trouble == "read-only":
            remount(stack.results_dir, "ro")
        else:
            fill(stack.results_dir)
        folder = stack.http.post("/jobs", json={"path": "bulk"})
        upload = stack.http.post(
            "/jobs", content=zip_of_a_file(), headers={"content-type": "application/zip"}
        )
        for response in (folder, upload):
            assert response.status_code == 503, response.text
            assert response.json()["error"]["reason"] == reason, response.text
            assert str(stack.results_dir) not in response.text, (
                "the server's paths are not the client's business"
            )
    assert "Traceback" not in stack.api.logs()


def test_squid_batch_on_a_read_only_out_folder_is_one_line(stack: ApiStack) -> None:
    """With a broker: refused before a job is submitted, not after the workers scored everything."""
    folder = Path(stack.env["SQUID_IMPORT_ROOT"]) / "bulk"
    with read_only_folder(stack.tmp / "read-only-out") as out:
        result = run_cli(stack.env, "batch", str(folder), "--out", str(out / "results"), "--no-progress")
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Read-only file system" in lines[0] or "Permission denied" in lines[0], lines
    assert "submitted" not in result.stderr
