"""``squid listen`` and ``squid batch --dicomweb`` against a real Orthanc (Debian package) as the PACS.

Studies travel the way a hospital sends them: Orthanc's own C-STORE SCU (``/modalities/squid/store``)
or dcmtk's ``storescu`` to the node, results back by C-STORE into the same study in Orthanc, which the
tests read through its REST API. Scores are compared with what ``squid score --json`` prints.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage, generate_uid

from model.dicom_results import codes as sr_codes
from tests.dicom_results_support import sr_content
from tests.jobs.jobs_support import REPO_ROOT, wait_for
from tests.net_support import free_port
from tests.node.orthanc_support import NODE_AE, NodeProcess, Orthanc, echo, requires_orthanc

pytestmark = [requires_orthanc, pytest.mark.timeout(300)]

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
STORESCU = shutil.which("storescu")
WAIT_S = 120.0  # a hang guard, not a performance assertion


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc", node_port=free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def launch(tmp_path: Path, orthanc: Orthanc) -> Iterator[Callable[..., NodeProcess]]:
    """Starts ``squid listen`` sending to ``orthanc`` (or a closed port); every node is stopped after."""
    started: list[NodeProcess] = []

    def start(orthanc_port: int | None = None, **env: str) -> NodeProcess:
        destination = {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc_port or orthanc.dicom_port}
        settings = {
            "SQUID_DICOM_DESTINATIONS": json.dumps([destination]),
            "SQUID_DICOM_ALLOWED_AES": json.dumps(["ORTHANC", "STORESCU", "ECHOSCU"]),
            "SQUID_DICOM_METRICS_PORT": str(free_port()),
            **env,
        }
        node = NodeProcess(tmp_path / "node", orthanc.node_port, settings)
        started.append(node)
        return node.start()

    yield start
    for node in started:
        node.stop()


def cli_score(path: Path) -> float:
    run = subprocess.run(
        [sys.executable, "-m", "cli.main", "score", str(path), "--json"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return float(json.loads(run.stdout.splitlines()[0])["score"])


def results_of(orthanc: Orthanc, study_uid: str, sop_class: str) -> list[dict[str, object]]:
    found = orthanc.study_instances(study_uid)
    return [item for item in found if item["MainDicomTags"].get("SOPClassUID", "") == sop_class] or [
        item for item in found if _sop_class(orthanc, item) == sop_class
    ]


def _sop_class(orthanc: Orthanc, item: dict[str, object]) -> str:
    tags = httpx.get(f"{orthanc.url}/instances/{item['ID']}/simplified-tags", timeout=10).json()
    return str(tags.get("SOPClassUID", ""))


def sr_score(orthanc: Orthanc, sr: dict[str, object]) -> tuple[float, str]:
    """The SR's anomaly score and the SOP Instance UID of the image it references."""
    ds = dcmread(BytesIO(orthanc.instance_file(str(sr["ID"]))))
    content = sr_content(ds)
    return content.numbers[sr_codes.ANOMALY_SCORE.value], content.images[0][1]


def as_ct(source: Path, target: Path) -> Path:
    """A copy of a real image relabelled as CT, in the same study: a class the node must skip."""
    ds = dcmread(source)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.save_as(target, enforce_file_format=True)
    return target


def test_study_sent_by_orthanc_comes_back_as_sr_and_sc_in_the_same_study(
    tmp_path: Path, orthanc: Orthanc, launch: Callable[..., NodeProcess], dx_file: Path
) -> None:
    source = dcmread(dx_file, stop_before_pixels=True)
    study_uid, image_uid = str(source.StudyInstanceUID), str(source.SOPInstanceUID)
    orthanc.upload(dx_file)
    answer = orthanc.upload(as_ct(dx_file, tmp_path / "ct.dcm"))
    node = launch()
    orthanc.send_to_node(str(answer["ParentStudy"]))
    wait_for(lambda: len(orthanc.study_instances(study_uid)) >= 4, WAIT_S, "SR and SC in Orthanc")
    [sr] = results_of(orthanc, study_uid, SR_CLASS)
    [sc] = results_of(orthanc, study_uid, SC_CLASS)
    score, referenced = sr_score(orthanc, sr)
    assert referenced == image_uid
    assert score == pytest.approx(cli_score(dx_file), abs=1e-6)
    sc_ds = dcmread(BytesIO(orthanc.instance_file(str(sc["ID"]))), stop_before_pixels=True)
    assert sc_ds.StudyInstanceUID == study_uid
    skipped = {"outcome": "skipped", "reason": "not_a_radiograph_class"}
    assert node.metric("squid_node_instances_total", skipped) == 1
    # The same study again: the same UIDs come back, Orthanc keeps one copy of each.
    orthanc.send_to_node(str(answer["ParentStudy"]))
    wait_for(lambda: node.metric("squid_node_objects_sent_total") >= 4, WAIT_S, "second send")
    assert len(orthanc.study_instances(study_uid)) == 4
    assert not list((tmp_path / "node" / "results").rglob("*.dcm")), "delivered results are not kept"
    assert not echo("127.0.0.1", node.port, NODE_AE, calling="INTRUDER")
    assert node.metric("squid_node_associations_total", {"outcome": "rejected"}) >= 1


@pytest.mark.skipif(STORESCU is None, reason="dcmtk's storescu not installed (scripts/test.sh installs it)")
def test_node_killed_before_sending_loses_and_duplicates_nothing(
    orthanc: Orthanc, launch: Callable[..., NodeProcess], shared_data: Path
) -> None:
    folder = shared_data / "dicom" / "torchxrayvision"
    source_file = folder / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"  # JPEG baseline CR
    study_uid = str(dcmread(source_file, stop_before_pixels=True).StudyInstanceUID)
    orthanc.upload(source_file)
    # The PACS is down: nothing is acknowledged, and nothing may reach the dead-letter folder yet.
    node = launch(orthanc_port=free_port(), SQUID_DICOM_SEND_ATTEMPTS="1000")
    storescu = [str(STORESCU), "-aet", "STORESCU", "-aec", NODE_AE, "-xy"]  # propose JPEG baseline
    subprocess.run([*storescu, "127.0.0.1", str(node.port), str(source_file)], check=True, timeout=60)
    wait_for(lambda: len(node.spool_files("outbox")) == 2, WAIT_S, "results in the outbox")
    node.kill()
    assert len(orthanc.study_instances(study_uid)) == 1
    node = launch()
    wait_for(lambda: len(orthanc.study_instances(study_uid)) == 3, WAIT_S, "results after restart")
    wait_for(lambda: not node.spool_files("outbox"), WAIT_S, "outbox drained")
    subprocess.run([*storescu, "127.0.0.1", str(node.port), str(source_file)], check=True, timeout=60)
    wait_for(lambda: node.metric("squid_node_objects_sent_total") >= 4, WAIT_S, "re-send")
    assert len(orthanc.study_instances(study_uid)) == 3
    assert not node.spool_files("dead")


def test_twenty_images_over_two_associations_are_scored_once_each(
    tmp_path: Path, orthanc: Orthanc, launch: Callable[..., NodeProcess], dx_file: Path
) -> None:
    from pynetdicom import AE

    base = dcmread(dx_file)
    study_uid = generate_uid()
    images = []
    for _ in range(20):
        ds = copy.deepcopy(base)
        ds.StudyInstanceUID = study_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        images.append(ds)
    node = launch(SQUID_DICOM_QUIET_SECONDS="2")
    statuses: list[int] = []

    def send(part: list[object]) -> None:
        ae = AE(ae_title="STORESCU")
        ae.add_requested_context(base.SOPClassUID, base.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
        assert assoc.is_established
        statuses.extend(int(assoc.send_c_store(ds).Status) for ds in part)
        assoc.release()

    senders = [threading.Thread(target=send, args=(images[i::2],)) for i in range(2)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join(timeout=WAIT_S)
    assert statuses == [0] * 20
    wait_for(lambda: len(orthanc.study_instances(study_uid)) == 40, WAIT_S, "40 results in Orthanc")
    rows = [
        json.loads(line)
        for path in (tmp_path / "node" / "results" / "node").glob("*/instances.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert sorted(row["sop_instance_uid"] for row in rows) == sorted(str(ds.SOPInstanceUID) for ds in images)
    assert node.metric("squid_node_images_scored_total", {"outcome": "scored"}) == 20


def test_dicomweb_pull_scores_the_study_like_squid_score(
    tmp_path: Path, orthanc: Orthanc, dx_file: Path
) -> None:
    source = dcmread(dx_file, stop_before_pixels=True)
    orthanc.upload(dx_file)
    out = tmp_path / "out"
    day = f"{source.StudyDate[:4]}-{source.StudyDate[4:6]}-{source.StudyDate[6:]}"
    for selection in (["--study", str(source.StudyInstanceUID)], ["--since", day, "--until", day]):
        subprocess.run(
            [
                *(sys.executable, "-m", "cli.main", "batch", "--dicomweb", orthanc.dicomweb_url),
                *selection,
                *("--out", str(out), "--dicom-out", "--in-process", "--no-progress"),
            ],
            cwd=REPO_ROOT,
            check=True,
            timeout=180,
            env={k: v for k, v in __import__("os").environ.items() if k != "SQUID_BROKER_URL"},
        )
        [row] = [json.loads(line) for line in (out / "instances.jsonl").read_text().splitlines()]
        assert row["score"] == pytest.approx(cli_score(dx_file), abs=1e-6)
        assert sum(1 for _ in (out / "dicom").glob("*.dcm")) == 2


def test_results_go_back_by_stow_rs(
    orthanc: Orthanc, launch: Callable[..., NodeProcess], dx_file: Path
) -> None:
    from pynetdicom import AE

    source = dcmread(dx_file)
    node = launch(
        SQUID_DICOM_DESTINATIONS="[]", SQUID_DICOM_STOW="true", SQUID_DICOMWEB_URL=orthanc.dicomweb_url
    )
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(source.SOPClassUID, source.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_established
    assert int(assoc.send_c_store(source).Status) == 0
    assoc.release()
    study_uid = str(source.StudyInstanceUID)
    wait_for(lambda: len(orthanc.study_instances(study_uid)) == 2, WAIT_S, "SR and SC stored by STOW-RS")
    assert len(results_of(orthanc, study_uid, SR_CLASS)) == 1
    assert node.metric("squid_node_objects_sent_total", {"destination": "stow"}) == 2


def test_out_of_domain_images_get_no_result_object_and_are_counted(
    tmp_path: Path, orthanc: Orthanc, launch: Callable[..., NodeProcess], dx_file: Path, shared_data: Path
) -> None:
    """A CT slice stored as secondary capture (Modality CT) and a real DX that is no chest film (a
    dog's thorax) reach the node beside a chest film: only the chest film gets an SR and SC; the
    others get no object that could read as "normal", a row saying why, and a metric."""
    from pydicom.data import get_testdata_file
    from pynetdicom import AE

    ct = dcmread(get_testdata_file("CT_small.dcm"))
    ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    dog = dcmread(shared_data / "dicom" / "highdicom" / "dx_image.dcm")
    chest = dcmread(dx_file)
    node = launch(SQUID_DICOM_QUIET_SECONDS="2")
    ae = AE(ae_title="STORESCU")
    for ds in (ct, dog, chest):
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_established
    assert [int(assoc.send_c_store(ds).Status) for ds in (ct, dog, chest)] == [0, 0, 0]
    assoc.release()
    chest_study = str(chest.StudyInstanceUID)
    wait_for(lambda: len(orthanc.study_instances(chest_study)) == 2, WAIT_S, "the chest film's SR and SC")
    wait_for(
        lambda: node.metric("squid_node_images_scored_total", {"outcome": "out_of_domain"}) == 2,
        WAIT_S,
        "two images counted out of domain",
    )
    assert orthanc.study_instances(str(ct.StudyInstanceUID)) == []
    assert orthanc.study_instances(str(dog.StudyInstanceUID)) == []
    assert node.metric("squid_node_objects_sent_total") == 2
    rows = {
        row["sop_instance_uid"]: row
        for path in (tmp_path / "node" / "results" / "node").glob("*/instances.jsonl")
        for row in map(json.loads, path.read_text().splitlines())
    }
    assert rows[str(ct.SOPInstanceUID)]["status"] == "out_of_domain"
    assert rows[str(ct.SOPInstanceUID)]["domain_reasons"] == ["modality"]
    assert rows[str(dog.SOPInstanceUID)]["domain_reasons"] == ["not_a_chest_radiograph"]
    assert (
        rows[str(ct.SOPInstanceUID)]["score"] is None and rows[str(ct.SOPInstanceUID)]["is_anomalous"] is None
    )
    assert rows[str(chest.SOPInstanceUID)]["status"] == "scored"
    assert "not assessed" in node.log()
