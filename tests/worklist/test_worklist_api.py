"""The worklist's API on a real stack: a job over real films, then its studies ranked, filtered and
opened; the DICOM outputs as a zip; the node's endpoints without a node, and with its files."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from pathlib import Path

import httpx
import pytest
from PIL import Image

from model.runtime import SquidRuntime
from service.node.health import write_health
from tests.jobs.jobs_support import wait_for
from tests.service.http_support import local_score
from tests.worklist.conftest import Stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
JOB_WAIT_S = 300.0  # a hang guard, not a performance assertion


def finished_job(http: httpx.Client, **body: object) -> dict[str, object]:
    response = http.post("/jobs", json={"path": "ward-3", **body})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]

    def done() -> dict[str, object] | None:
        job = http.get(f"/jobs/{job_id}").json()
        return job if job["state"] not in ("queued", "running") else None

    job = wait_for(done, JOB_WAIT_S, "the job to end", interval=0.5)
    assert job["state"] == "succeeded", job
    return job


@pytest.fixture(scope="module")
def job(stack: Stack) -> dict[str, object]:
    with stack.api.client() as http:
        return finished_job(http, dicom_out=True)


def test_the_job_list_shows_the_job_newest_first(stack: Stack, job: dict[str, object]) -> None:
    with stack.api.client() as http:
        listed = http.get("/jobs", params={"limit": 5}).json()
    assert listed["total"] >= 1
    first = listed["jobs"][0]
    assert (first["id"], first["state"], first["total"]) == (job["id"], "succeeded", job["total"])
    assert set(first["results"]) >= {"instance_csv", "dicom_zip"}


def test_the_worklist_ranks_the_job_studies_flagged_first(stack: Stack, job: dict[str, object]) -> None:
    with stack.api.client() as http:
        page = http.get("/worklist", params={"job": job["id"]}).json()
    studies = page["studies"]
    by_accession = {s["accession_number"]: s for s in studies}
    assert set(by_accession) >= {study.accession for study in stack.studies}
    scores = [s["score"] for s in studies if s["score"] is not None]
    flags = [s["flagged"] for s in studies if s["score"] is not None]
    assert flags == sorted(flags, reverse=True)  # flagged first ...
    for group in (True, False):  # ... then by score within each group
        inside = [sc for sc, fl in zip(scores, flags, strict=True) if fl is group]
        assert inside == sorted(inside, reverse=True)
    assert studies[-1]["status"] == "skipped" and studies[-1]["reasons"] == ["unsupported_format"]
    last = by_accession[stack.studies[-1].accession]
    assert (last["images"], last["scored"], last["reasons"]) == (3, 2, ["out_of_domain"])  # the lateral
    assert last["study_date"] == "2026-12-06"
    assert last["patient_name"] is None and last["patient_id"] is None  # off by default
    assert page["total"] == len(studies)


def test_a_study_opens_with_its_images_and_pictures(stack: Stack, job: dict[str, object]) -> None:
    runtime = SquidRuntime(intra_op_threads=1)
    study = stack.studies[-1]
    with stack.api.client() as http:
        page = http.get("/worklist", params={"job": job["id"]}).json()
        row = next(s for s in page["studies"] if s["accession_number"] == study.accession)
        thumb = http.get(row["thumbnail_url"])
        detail = http.get(row["study_url"]).json()
        scored = [image for image in detail["images"] if image["view_url"]]
        view = http.get(scored[0]["view_url"]).json()
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 96
    assert [image["status"] for image in detail["images"]] == ["scored", "scored", "out_of_domain"]
    assert scored[0]["score"] == row["score"] == pytest.approx(view["score"], abs=1e-9)
    source = stack.import_root / "ward-3" / scored[0]["path"]
    assert view["score"] == pytest.approx(local_score(runtime, source.read_bytes()), abs=1e-9)
    pictures = {
        name: Image.open(io.BytesIO(base64.b64decode(view[f"{name}_png_base64"])))
        for name in ("film", "map", "input", "reconstruction")
    }
    assert pictures["map"].mode == "RGBA" and pictures["map"].size == pictures["film"].size
    assert pictures["map"].getextrema()[3][1] > 0  # a pneumonia film has evidence somewhere


def test_filters_are_checked_and_applied(stack: Stack, job: dict[str, object]) -> None:
    with stack.api.client() as http:
        normal = http.get("/worklist", params={"job": job["id"], "label": "normal"}).json()
        dated = http.get(
            "/worklist",
            params={
                "job": job["id"],
                "date_from": "2026-12-02",
                "date_to": "2026-12-03",
                "sort": "study_date",
            },
        ).json()
        unknown = http.get("/worklist", params={"job": job["id"], "label": "suspicious"})
        facets = http.get("/worklist/facets").json()
    assert normal["studies"] and {s["label"] for s in normal["studies"]} == {"normal"}
    assert [s["study_date"] for s in dated["studies"]] == ["2026-12-03", "2026-12-02"]
    assert unknown.status_code == 422 and unknown.json()["error"]["reason"] == "invalid_label"
    assert facets["labels"] == ["anomalous", "normal"] and facets["node"] is False


def test_the_dicom_outputs_download_as_one_zip(stack: Stack, job: dict[str, object]) -> None:
    with stack.api.client() as http:
        response = http.get(f"/jobs/{job['id']}/dicom.zip")
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(response.content)).namelist()
    assert "dicom_outputs.csv" in names
    assert sum(name.startswith("dicom/sr-") for name in names) == 7  # seven scored DICOM films


def test_unknown_jobs_studies_and_images_are_404(stack: Stack, job: dict[str, object]) -> None:
    with stack.api.client() as http:
        reasons = [
            http.get(path).json()["error"]["reason"]
            for path in (
                "/worklist?job=" + "0" * 32,
                f"/jobs/{job['id']}/studies/1.2.3",
                f"/jobs/{job['id']}/images/{'0' * 24}/view",
                "/node/studies/1.2.3",
                "/node/health",
            )
        ]
    assert reasons == [
        "job_not_found",
        "study_not_found",
        "image_not_found",
        "no_node_studies",
        "node_not_seen",
    ]


def test_node_health_and_dead_letters_come_from_the_shared_folders(stack: Stack) -> None:
    state, spool = Path(stack.env["SQUID_NODE_STATE_DIR"]), Path(stack.env["SQUID_DICOM_SPOOL_DIR"])
    health = {
        "updated_at": "2026-12-07T10:00:00.000+00:00",
        "ae_title": "SQUID",
        "port": 11112,
        "associations": {"accepted": 3, "rejected": 1},
        "instances_stored": 4,
        "studies": {"waiting": 1, "scoring": 0, "scored": 2, "failed": 0},
        "images": {"scored": 3, "skipped": 1, "failed": 0},
        "objects_sent": 6,
        "send_failures": 2,
        "outbox": 0,
        "dead_letters": 1,
    }
    write_health(state, health)
    letter = spool / "dead" / "PACS@10.0.0.9" / "sr-1.2.3.dcm"
    letter.parent.mkdir(parents=True)
    letter.write_bytes(b"DICM")
    letter.with_name(letter.name + ".attempts").write_text("5")
    with stack.api.client() as http:
        shown = http.get("/node/health").json()
        listed = http.get("/node/dead-letters").json()["dead_letters"]
        missing = http.post(
            "/node/dead-letters/retry", json={"destination": "PACS@10.0.0.9", "name": "x.dcm"}
        )
        retried = http.post(
            "/node/dead-letters/retry", json={"destination": "PACS@10.0.0.9", "name": letter.name}
        )
    assert shown["running"] is False and shown["associations"] == {"accepted": 3, "rejected": 1}
    assert [(d["destination"], d["name"]) for d in listed] == [("PACS@10.0.0.9", letter.name)]
    assert missing.status_code == 404
    assert retried.status_code == 200 and len(retried.json()["retried"]) == 1
    moved = spool / "outbox" / "PACS@10.0.0.9" / letter.name
    assert moved.read_bytes() == b"DICM" and not letter.exists()
    assert not moved.with_name(moved.name + ".attempts").exists()  # a fresh count of attempts
    json.dumps(shown)


def test_state_changes_from_another_origin_are_refused(stack: Stack, job: dict[str, object]) -> None:
    """HTTP Basic credentials ride along on another site's form post: its Origin gives it away."""
    with stack.api.client() as http:
        foreign = http.post("/node/dead-letters/retry", json={}, headers={"Origin": "http://evil.example"})
        cancel = http.delete(f"/jobs/{job['id']}", headers={"Origin": "http://evil.example"})
        own = http.post("/node/dead-letters/retry", json={}, headers={"Origin": stack.api.url})
        reading = http.get("/worklist", headers={"Origin": "http://evil.example"})
    assert foreign.status_code == cancel.status_code == 403
    assert foreign.json()["error"]["reason"] == "cross_origin"
    assert own.status_code == 200 and reading.status_code == 200


def test_a_node_study_scored_on_the_workers_is_recorded_with_its_pictures(
    stack: Stack, tmp_path: Path
) -> None:
    """The node's worker path: the job keeps each image's pictures (``views``), the record copies
    them and the thumbnail, so the study stays viewable after the spool drops its files."""
    from service.jobs.manager import JobManager
    from service.node.records import node_index_path, record_batch
    from service.settings import Settings
    from service.worklist.index import PageQuery, query_page

    settings = Settings(
        broker_url=stack.env["SQUID_BROKER_URL"],
        queue=stack.env["SQUID_QUEUE"],
        key_prefix=stack.env["SQUID_KEY_PREFIX"],
        results_dir=Path(stack.env["SQUID_RESULTS_DIR"]),
        task_time_limit_s=int(stack.env["SQUID_TASK_TIME_LIMIT_S"]),
        visibility_timeout_s=int(stack.env["SQUID_VISIBILITY_TIMEOUT_S"]),
    )
    batch = stack.import_root / "ward-3" / "study-6"
    manager = JobManager(settings)
    view = manager.submit_folder(batch, "dicom node", check_import_root=False, dicom_out=True, views=True)
    view = wait_for(lambda: (v := manager.get(view.id)).finished and v, JOB_WAIT_S, "the node's job")
    assert view.state == "succeeded"
    state = tmp_path / "node-state"
    assert record_batch(state, batch, manager.job_dir(view.id), patient_identifiers=True) == 3
    page = query_page({"node": node_index_path(state)}, PageQuery())
    assert [(s["accession_number"], s["images"], s["scored"]) for s in page.studies] == [("ACC0006", 3, 2)]
    assert page.studies[0]["patient_name"] == "Doe^Jane"  # recorded only because it was asked for
    pictures = sorted(p.name for p in (state / "views" / page.studies[0]["top_image"]).iterdir())
    assert pictures == ["film.png", "input.png", "map.png", "reconstruction.png", "thumb.png", "view.json"]
    assert record_batch(state, batch, manager.job_dir(view.id)) == 3  # sent again: replaced, not added
    again = query_page({"node": node_index_path(state)}, PageQuery()).studies
    assert [(s["images"], s["patient_name"]) for s in again] == [(3, "")]


def test_patient_identifiers_only_when_the_site_allows(
    stack: Stack, job: dict[str, object], tmp_path: Path
) -> None:
    from tests.jobs.jobs_support import start_api

    api = start_api({**stack.env, "SQUID_WORKLIST_PATIENT_IDENTIFIERS": "true"}, tmp_path / "api.log")
    try:
        with api.client() as http:
            studies = http.get("/worklist", params={"job": job["id"]}).json()["studies"]
            facets = http.get("/worklist/facets").json()
    finally:
        api.stop()
    scored = [s for s in studies if s["score"] is not None]
    assert {(s["patient_name"], s["patient_id"]) for s in scored} == {("Doe^Jane", "PID-000001")}
    assert facets["patient_identifiers"] is True
    assert "Doe^Jane" not in api.logs()
    results = Path(stack.env["SQUID_RESULTS_DIR"]) / str(job["id"])
    # The DICOM results copy the patient module by design (they file into the study); nothing else may.
    kept = [p for p in results.rglob("*") if p.is_file() and p.suffix not in (".dcm", ".zip")]
    assert kept and not [p for p in kept if b"Doe^Jane" in p.read_bytes()]  # read from the source when shown


def test_the_new_endpoints_are_documented_with_response_models(stack: Stack) -> None:
    with stack.api.client() as http:
        spec = http.get("/openapi.json").json()
    paths = spec["paths"]
    for path, model in (
        ("/worklist", "WorklistPage"),
        ("/worklist/facets", "WorklistFacets"),
        ("/jobs", "JobList"),
        ("/jobs/{job_id}/studies/{study_key}", "StudyDetail"),
        ("/jobs/{job_id}/images/{image_key}/view", "ImageViewOut"),
        ("/node/studies/{study_key}", "StudyDetail"),
        ("/node/health", "NodeHealth"),
        ("/node/dead-letters", "DeadLetters"),
    ):
        schema = paths[path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith(f"/{model}"), path
    assert "/node/dead-letters/retry" in paths and "/jobs/{job_id}/dicom.zip" in paths
    parameters = {p["name"] for p in paths["/worklist"]["get"]["parameters"]}
    assert parameters >= {
        "job",
        "node",
        "label",
        "status",
        "date_from",
        "date_to",
        "sort",
        "order",
        "offset",
        "limit",
    }
