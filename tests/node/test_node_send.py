"""Results on their way back (issue 25, defects 5, 6, 7 and 15): each file on its own, STOW-RS answers read
per instance, images without results counted, and no copy of a delivered result kept.

The destinations are real servers: a pynetdicom Storage SCP that accepts only the SR class, and a
small HTTP server that parses the STOW-RS request and answers as a DICOMweb archive does when it
stores some instances and refuses others (PS3.18 10.5: 202 with a FailedSOPSequence, or 409).
"""

from __future__ import annotations

import email.parser
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from service.node.kept import DAY_S, KeptResults
from service.node.metrics import NodeMetrics
from service.node.send import CStoreSender, Dispatcher, StowSender
from service.node.spool import Spool
from service.settings import DicomDestination, Settings
from tests.jobs.jobs_support import wait_for
from tests.net_support import free_port
from tests.node.node_peers import instances, store
from tests.node.orthanc_support import NodeProcess

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
WAIT_S = 120.0


def result_file(folder: Path, kind: str, sop_class: str) -> Path:
    """A small valid DICOM object of ``sop_class`` named like the node's results."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = folder / f"{kind}-{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def sr_only_pacs() -> Iterator[tuple[int, list[str]]]:
    """A Storage SCP that supports the Comprehensive 3D SR class only; yields (port, stored SOP UIDs)."""
    from pynetdicom import AE, evt

    stored: list[str] = []

    def on_store(event: object) -> int:
        stored.append(str(event.dataset.SOPInstanceUID))  # type: ignore[attr-defined]
        return 0x0000

    ae = AE(ae_title="PACS")
    ae.add_supported_context(SR_CLASS, [ExplicitVRLittleEndian, "1.2.840.10008.1.2"])
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    yield port, stored
    server.shutdown()


def test_a_destination_that_refuses_one_class_still_gets_the_other(
    tmp_path: Path, sr_only_pacs: tuple[int, list[str]]
) -> None:
    port, stored = sr_only_pacs
    spool = Spool(tmp_path / "spool")
    destination = DicomDestination(ae_title="PACS", host="127.0.0.1", port=port)
    sr = result_file(tmp_path, "sr", SR_CLASS)
    sc = result_file(tmp_path, "sc", SecondaryCaptureImageStorage)
    for path in (sr, sc):
        spool.queue_result(destination.key, path)
    metrics = NodeMetrics()
    sender = CStoreSender(destination, "SQUID", Settings())
    dispatcher = Dispatcher(spool, {destination.key: sender}, metrics, attempts=2, retry_seconds=0)
    assert dispatcher.round(now=0.0) == 1
    assert stored == [dcmread(sr).SOPInstanceUID]
    assert [path.name for path in spool.pending(destination.key)] == [sc.name]
    dispatcher.round(now=1.0)
    assert [path.name for path in (spool.folder("dead") / destination.key).glob("*.dcm")] == [sc.name]
    assert metrics.sent.labels(destination.key)._value.get() == 1
    assert metrics.dead.labels(destination.key)._value.get() == 1


class StowArchive(BaseHTTPRequestHandler):
    """STOW-RS that stores every instance but secondary captures, answering ``status`` (202 or 409)."""

    status = 202

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        message = email.parser.BytesParser().parsebytes(
            b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body
        )
        stored, failed = [], []
        for part in message.get_payload():  # type: ignore[union-attr]
            ds = dcmread(BytesIO(part.get_payload(decode=True)))
            item = {
                "00081150": {"vr": "UI", "Value": [str(ds.SOPClassUID)]},
                "00081155": {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]},
            }
            if ds.SOPClassUID == SecondaryCaptureImageStorage or self.status == 409:
                failed.append({**item, "00081197": {"vr": "US", "Value": [0xC122]}})
            else:
                stored.append(item)
        answer = {"00081198": {"vr": "SQ", "Value": failed}, "00081199": {"vr": "SQ", "Value": stored}}
        data = json.dumps(answer).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/dicom+json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stow_archive() -> Iterator[Callable[[int], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(status: int) -> str:
        handler = type("Archive", (StowArchive,), {"status": status})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/dicom-web"

    yield start
    for server in servers:
        server.shutdown()


@pytest.mark.parametrize("status", [202, 409])
def test_stow_instances_the_archive_refused_are_retried_then_dead_lettered_never_counted_as_sent(
    tmp_path: Path, stow_archive: Callable[[int], str], status: int
) -> None:
    settings = Settings(dicomweb_url=stow_archive(status), dicom_stow=True)
    spool = Spool(tmp_path / "spool")
    sr = result_file(tmp_path, "sr", SR_CLASS)
    sc = result_file(tmp_path, "sc", SecondaryCaptureImageStorage)
    for path in (sr, sc):
        spool.queue_result("stow", path)
    metrics = NodeMetrics()
    dispatcher = Dispatcher(spool, {"stow": StowSender(settings)}, metrics, attempts=2, retry_seconds=0)
    dispatcher.round(now=0.0)
    stored = [sr.name] if status == 202 else []
    assert sorted(path.name for path in spool.pending("stow")) == sorted({sr.name, sc.name} - set(stored))
    dispatcher.round(now=1.0)
    assert spool.pending("stow") == []
    dead = sorted(path.name for path in (spool.folder("dead") / "stow").glob("*.dcm"))
    assert dead == sorted({sr.name, sc.name} - set(stored))
    assert metrics.sent.labels("stow")._value.get() == len(stored)
    assert metrics.send_failures.labels("stow")._value.get() == 2 * len(dead)


def test_an_image_without_results_is_logged_and_counted_and_delivered_results_are_not_kept(
    tmp_path: Path,
    launch_node: Callable[..., NodeProcess],
    dx_file: Path,
    sr_only_pacs: tuple[int, list[str]],
) -> None:
    port, stored = sr_only_pacs
    destination = [{"ae_title": "PACS", "host": "127.0.0.1", "port": port}]
    node = launch_node(SQUID_DICOM_DESTINATIONS=json.dumps(destination), SQUID_DICOM_SEND_ATTEMPTS="1")
    good, seriesless = instances(dx_file, 2)
    del seriesless.SeriesInstanceUID  # the results must reference it: no SR/SC, with a reason
    assert store(node.port, [good, seriesless]) == [0, 0]
    wait_for(lambda: stored and not node.spool_files("outbox"), WAIT_S, "the SR delivered, the SC given up")
    not_built = {"reason": "source_missing_uids"}
    wait_for(lambda: node.metric("squid_node_results_not_built_total", not_built) == 1, WAIT_S, "count")
    assert "no SR/SC for a scored image" in node.log()
    assert node.metric("squid_node_images_scored_total", {"outcome": "scored"}) == 2
    results = node.workdir / "results"
    assert list(results.rglob("instances.jsonl")), "the per-image rows stay"
    assert not list(results.rglob("*.dcm")), "no copy of a delivered result is kept"


def test_kept_results_are_swept_after_their_days(tmp_path: Path) -> None:
    kept = KeptResults(tmp_path / "node", days=2)
    scored = tmp_path / "jobs" / "dicom"  # where a worker's job wrote them
    scored.mkdir(parents=True)
    old, new = (result_file(scored, kind, SR_CLASS) for kind in ("sr", "sc"))
    kept.hand_over("1.2.3~1", [old, new], delivered=True)
    moved = sorted((tmp_path / "node" / "1.2.3~1" / "dicom").iterdir())
    assert [path.name for path in moved] == sorted([old.name, new.name])
    now = time.time()
    os.utime(moved[0], (now - 3 * DAY_S, now - 3 * DAY_S))
    assert kept.sweep(now) == 1
    assert [path.name for path in (tmp_path / "node" / "1.2.3~1" / "dicom").iterdir()] == [moved[1].name]
    KeptResults(tmp_path / "none", days=0).hand_over("b", [moved[1]], delivered=True)
    assert not moved[1].exists()
