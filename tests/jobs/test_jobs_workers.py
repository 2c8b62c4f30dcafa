"""Jobs end to end on real processes: a private redis-server, a ``squid worker`` (prefork, model
loaded after the fork) and the API under ``squid serve``; every check goes over HTTP or the CLI."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicom_results_support import dciodvfy_errors, requires_dciodvfy, sr_content
from pydicom import dcmread

from model.dicom_results import codes as sr_codes
from tests.jobs.jobs_support import (
    JOB_TIMEOUT_S,
    ApiStack,
    RedisServer,
    api_stack,
    job_env,
    metric_value,
    run_cli,
    wait_for,
    wait_job,
)
from tests.jobs.pacs_tree import INSTANCE_HEADER, SENTINELS, Expected, check_rows_against, zip_tree

pytestmark = pytest.mark.slow  # a real API and worker stack over a PACS tree

RESULT_FILES = ("instances.csv", "instances.jsonl", "studies.csv")


@dataclass
class Stack(ApiStack):
    expected: Expected


@pytest.fixture(scope="module")
def stack(pacs_source: tuple[Path, Expected], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("jobs")
    source, expected = pacs_source
    redis_server = RedisServer(tmp / "redis", persistent=True).start()
    # No fault is injected here: generous limits, so a loaded machine cannot kill a slow chunk (a chunk
    # with DICOM results decodes its files twice and builds two objects per file).
    limits = {"SQUID_TASK_TIME_LIMIT_S": "120", "SQUID_VISIBILITY_TIMEOUT_S": "150"}
    env = job_env(tmp, redis_server.url, SQUID_MAX_ZIP_MB="1", **limits)
    shutil.copytree(source, Path(env["SQUID_IMPORT_ROOT"]) / "site" / "night1", symlinks=True)
    with api_stack(tmp, redis_server, env) as running:
        yield Stack(**vars(running), expected=expected)


def results(http: httpx.Client, job_id: str, fmt: str, level: str) -> httpx.Response:
    response = http.get(f"/jobs/{job_id}/results", params={"format": fmt, "level": level})
    assert response.status_code == 200, response.text
    return response


def download(http: httpx.Client, job_id: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, fmt, level in (
        ("instances.csv", "csv", "instance"),
        ("instances.jsonl", "jsonl", "instance"),
        ("studies.csv", "csv", "study"),
    ):
        (folder / name).write_bytes(results(http, job_id, fmt, level).content)
    return folder


def test_http_job_scores_every_file_of_a_pacs_export(stack: Stack) -> None:
    response = stack.http.post("/jobs", json={"path": "site/night1"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert job["state"] in ("queued", "running") and job["label"] == "site/night1"
    final = wait_job(stack.http, job["id"])
    assert final["state"] == "succeeded", final
    outcomes = list(stack.expected.outcome.values())
    assert final["total"] == final["done"] == len(outcomes)
    for status in ("scored", "skipped", "out_of_domain", "failed"):
        assert final[status] == sum(1 for outcome in outcomes if outcome[0] == status), status
    assert final["failures"] == stack.expected.failures()
    assert final["started_at"] and final["finished_at"] and final["files_per_s"] > 0
    assert final["model_version"] and final["error"] is None

    csv_response = results(stack.http, job["id"], "csv", "instance")
    assert csv_response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(csv_response.text)))
    assert list(rows[0]) == INSTANCE_HEADER
    check_rows_against(rows, stack.expected)

    jsonl = [
        json.loads(line) for line in results(stack.http, job["id"], "jsonl", "instance").text.splitlines()
    ]
    assert [record["path"] for record in jsonl] == [row["path"] for row in rows]
    for record, row in zip(jsonl, rows, strict=True):
        assert record["status"] == row["status"] and record["reason"] == row["reason"]
        if row["status"] == "scored":
            assert f"{record['score']:.6f}" == row["score"] and isinstance(record["is_anomalous"], bool)
        else:
            assert record["score"] is None and record["is_anomalous"] is None

    studies = list(csv.DictReader(io.StringIO(results(stack.http, job["id"], "csv", "study").text)))
    assert {study["study_instance_uid"] for study in studies} == set(stack.expected.study.values())
    for study in studies:
        members = [row for row in rows if row["study_instance_uid"] == study["study_instance_uid"]]
        scored = [float(row["score"]) for row in members if row["status"] == "scored"]
        assert int(study["images"]) == len(members) and int(study["scored"]) == len(scored)
        if scored:
            assert study["max_score"] == f"{max(scored):.6f}"
            assert study["flagged"] == (
                "true" if any(r["is_anomalous"] == "true" for r in members) else "false"
            )
        else:
            assert study["max_score"] == study["flagged"] == ""
    study_jsonl = results(stack.http, job["id"], "jsonl", "study").text.splitlines()
    assert len(study_jsonl) == len(studies)

    everything = csv_response.text + stack.worker.logs() + stack.api.logs()
    assert not [s for s in SENTINELS if s in everything], "a patient identifier leaked"


@requires_dciodvfy
def test_dicom_out_job_files_an_sr_and_sc_for_every_scored_dicom(stack: Stack) -> None:
    response = stack.http.post("/jobs", json={"path": "site/night1", "dicom_out": True})
    assert response.status_code == 202, response.text
    final = wait_job(stack.http, response.json()["id"])
    assert final["state"] == "succeeded" and final["dicom_out"] is True, final
    assert "dicom_csv" in final["results"]
    index = results(stack.http, final["id"], "csv", "dicom").text
    rows = list(csv.DictReader(io.StringIO(index)))
    instances = list(csv.DictReader(io.StringIO(results(stack.http, final["id"], "csv", "instance").text)))
    scored = {row["path"]: row for row in instances if row["status"] == "scored" and row["sop_instance_uid"]}
    assert len(scored) == 8  # RLE, JPEG 2000, JPEG-LS, MONOCHROME1, no File Meta, JPEG baseline SC...
    assert sorted((row["path"], row["kind"], row["reason"]) for row in rows) == sorted(
        (path, kind, "") for path in scored for kind in ("sr", "sc")
    )
    job_dir = Path(stack.env["SQUID_RESULTS_DIR"]) / final["id"]
    for row in rows:
        source = scored[row["path"]]
        path = job_dir / row["file"]
        assert dciodvfy_errors(path) == [], row
        ds = dcmread(path)
        assert ds.SOPInstanceUID == row["sop_instance_uid"]
        assert ds.StudyInstanceUID == source["study_instance_uid"]
        assert row["source_sop_instance_uid"] == source["sop_instance_uid"]
        if row["kind"] == "sr":
            content = sr_content(ds)
            assert f"{content.numbers[sr_codes.ANOMALY_SCORE.value]:.6f}" == source["score"]
            assert [uid for _, uid in content.images] == [source["sop_instance_uid"]]
    everything = index + stack.worker.logs() + stack.api.logs()
    assert not [s for s in SENTINELS if s in everything], "a patient identifier leaked"

    # squid batch --dicom-out, in-process and through the workers: the same objects, the same UIDs.
    folder = stack.import_root / "site" / "night1"
    local_env = {k: v for k, v in stack.env.items() if k != "SQUID_BROKER_URL"}
    objects = sorted(p.name for p in (job_dir / "dicom").iterdir())
    assert len(objects) == len(rows)
    for env, out in ((local_env, stack.tmp / "local-dicom"), (stack.env, stack.tmp / "queued-dicom")):
        run = run_cli(env, "batch", str(folder), "--out", str(out), "--dicom-out", "--no-progress")
        assert run.returncode == 0, run.stderr
        assert (out / "dicom_outputs.csv").read_text() == index
        assert sorted(p.name for p in (out / "dicom").iterdir()) == sorted(
            p.name for p in (job_dir / "dicom").iterdir()
        )


def test_in_process_and_worker_results_are_identical(stack: Stack) -> None:
    folder = stack.import_root / "site" / "night1"
    job = stack.http.post("/jobs", json={"path": str(folder)}).json()
    assert wait_job(stack.http, job["id"])["state"] == "succeeded"
    over_http = download(stack.http, job["id"], stack.tmp / "http")

    local_env = {k: v for k, v in stack.env.items() if k != "SQUID_BROKER_URL"}
    local = run_cli(local_env, "batch", str(folder), "--out", str(stack.tmp / "local"), "--no-progress")
    assert local.returncode == 0, local.stderr
    queued = run_cli(stack.env, "batch", str(folder), "--out", str(stack.tmp / "queued"), "--no-progress")
    assert queued.returncode == 0, queued.stderr
    assert "job " in queued.stdout and "results in" in queued.stdout
    for run in (local, queued):
        assert f"{stack.expected.failed_summary()};" in run.stdout, "both paths say why files failed"
    for name in RESULT_FILES:
        reference = (over_http / name).read_bytes()
        assert (stack.tmp / "local" / name).read_bytes() == reference, f"in-process {name} differs"
        assert (stack.tmp / "queued" / name).read_bytes() == reference, f"CLI-submitted {name} differs"


def test_resubmitting_a_folder_resumes_without_rescoring(stack: Stack) -> None:
    first = wait_job(stack.http, stack.http.post("/jobs", json={"path": "site/night1"}).json()["id"])
    again = wait_job(stack.http, stack.http.post("/jobs", json={"path": "site/night1"}).json()["id"])
    assert again["state"] == "succeeded"
    assert again["scored"] == first["scored"] > 0
    assert again["resumed"] == again["scored"], "already scored files were scored again"
    a = results(stack.http, first["id"], "csv", "instance").content
    b = results(stack.http, again["id"], "csv", "instance").content
    assert a == b


def test_zip_upload_jobs(stack: Stack) -> None:
    part = stack.tmp / "zip-source"
    source = stack.import_root / "site" / "night1"
    shutil.copytree(source / "PATIENT_B", part / "PATIENT_B")
    shutil.copytree(source / "images", part / "images")
    archive = stack.tmp / "upload.zip"
    zip_tree(part, archive)
    expected = {p: o for p, o in stack.expected.outcome.items() if p.split("/")[0] in ("PATIENT_B", "images")}

    raw = stack.http.post("/jobs", content=archive.read_bytes(), headers={"content-type": "application/zip"})
    assert raw.status_code == 202, raw.text
    multipart = stack.http.post(
        "/jobs", files={"file": ("night.zip", archive.read_bytes(), "application/zip")}
    )
    assert multipart.status_code == 202, multipart.text
    bodies = []
    for response in (raw, multipart):
        final = wait_job(stack.http, response.json()["id"])
        assert final["state"] == "succeeded" and final["source"] == "zip", final
        body = results(stack.http, final["id"], "csv", "instance").text
        rows = list(csv.DictReader(io.StringIO(body)))
        assert {row["path"]: (row["status"], row["reason"]) for row in rows} == expected
        bodies.append(body)
    assert bodies[0] == bodies[1]


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_bad_submissions_are_refused(stack: Stack) -> None:
    outside = stack.tmp / "outside"
    outside.mkdir(exist_ok=True)
    link = stack.import_root / "site" / "escape"
    if not link.exists():
        os.symlink(outside, link)
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"json": {"path": "../outside"}}, 403, "path_forbidden"),
        ({"json": {"path": "site/night1/../../../outside"}}, 403, "path_forbidden"),
        ({"json": {"path": str(outside)}}, 403, "path_forbidden"),
        ({"json": {"path": "site/escape"}}, 403, "path_forbidden"),
        ({"json": {"path": "site/missing"}}, 404, "path_not_found"),
        ({"json": {"path": "site/night1/images/normal.jpeg"}}, 422, "not_a_directory"),
        ({"json": {"folder": "x"}}, 422, "invalid_request"),
        ({"content": b"path=x", "headers": {"content-type": "text/plain"}}, 415, "unsupported_format"),
        (
            {"content": _zip_bytes({"../evil.dcm": b"x"}), "headers": {"content-type": "application/zip"}},
            400,
            "unsafe_archive",
        ),
        (
            {"content": b"PK\x03\x04 broken", "headers": {"content-type": "application/zip"}},
            415,
            "invalid_archive",
        ),
        ({"content": os.urandom(3 << 19), "headers": {"content-type": "application/zip"}}, 413, "too_large"),
    ]
    for kwargs, status, reason in cases:
        response = stack.http.post("/jobs", **kwargs)
        assert response.status_code == status, (kwargs.get("json"), response.text)
        assert response.json()["error"]["reason"] == reason
    assert not (stack.tmp / "evil.dcm").exists()
    missing = stack.http.get("/jobs/" + "0" * 32)
    assert missing.status_code == 404 and missing.json()["error"]["reason"] == "job_not_found"
    assert stack.http.get("/jobs/../../etc").status_code == 404
    bad_format = stack.http.get("/jobs/" + "0" * 32 + "/results", params={"format": "xml"})
    assert bad_format.status_code == 422


def test_cancel_a_running_job(stack: Stack, shared_data: Path) -> None:
    from tests.jobs.pacs_tree import build_bulk_tree

    build_bulk_tree(stack.import_root / "site" / "bulk", shared_data, 160)
    job = stack.http.post("/jobs", json={"path": "site/bulk"}).json()
    cancelled = stack.http.delete(f"/jobs/{job['id']}")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled" and cancelled.json()["finished_at"]
    assert stack.http.delete(f"/jobs/{job['id']}").status_code == 409
    response = stack.http.get(f"/jobs/{job['id']}/results")
    assert response.status_code == 409 and response.json()["error"]["reason"] == "job_not_finished"

    def drained() -> bool:
        text = stack.worker.metrics()
        waiting = metric_value(text, "squid_batch_queue_messages")
        return waiting == 0 and metric_value(text, "squid_batch_unacked_messages") == 0

    wait_for(drained, JOB_TIMEOUT_S, "the queue to drain")
    later = wait_job(stack.http, job["id"])
    assert later["state"] == "cancelled" and later["done"] < 160, later


def test_worker_metrics_reach_prometheus(stack: Stack) -> None:
    text = stack.worker.metrics()
    assert metric_value(text, "squid_batch_files_total", {"outcome": "scored"}) > 0
    for reason in ("no_pixel_data", "unsupported_format", "dicomdir"):
        assert metric_value(text, "squid_batch_files_total", {"outcome": "skipped", "reason": reason}) > 0
    for reason in ("view", "modality", "body_part"):  # the domain gate's reasons, one series each
        assert (
            metric_value(text, "squid_batch_files_total", {"outcome": "out_of_domain", "reason": reason}) > 0
        )
    for reason in ("undecodable", "empty_image", "missing_file"):
        assert metric_value(text, "squid_batch_files_total", {"outcome": "failed", "reason": reason}) > 0
    assert metric_value(text, "squid_batch_tasks_total", {"task": "chunk", "outcome": "succeeded"}) > 0
    assert metric_value(text, "squid_batch_inference_seconds_count") > 0
    assert metric_value(text, "squid_batch_queue_wait_seconds_count", {"task": "chunk"}) > 0
    assert metric_value(text, "squid_batch_file_stage_seconds_count", {"stage": "decode"}) > 0
    assert metric_value(text, "squid_batch_jobs_finished_total", {"state": "succeeded"}) > 0
    assert metric_value(text, "squid_batch_worker_info") == 1
    assert metric_value(text, "squid_batch_redis_up") == 1
    assert "squid_batch_queue_messages{" in text and 'squid_batch_jobs{state="running"}' in text
