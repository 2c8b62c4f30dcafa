"""The node's spool and send loop without a PACS: durable filing, study closing, retries, dead letters."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from service.node.metrics import NodeMetrics
from service.node.send import CStoreSender, Dispatcher
from service.node.spool import Spool, read_attempts
from service.settings import DicomDestination, Settings
from tests.net_support import free_port

STUDY = "1.2.3.4"


def small_dicom(path: Path) -> Path:
    """A valid DICOM file (so a failed send is the network's fault, not the file's)."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID = SecondaryCaptureImageStorage, "1.2", STUDY
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def received(spool: Spool, data: bytes) -> Path:
    """A file as the SCP receives one: streamed into the spool's ``tmp/``."""
    path = spool.folder("tmp") / f"{uuid.uuid4().hex}.dcm"
    path.write_bytes(data)
    return path


def test_instances_are_filed_under_their_study_and_replace_themselves(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first = spool.put_instance(STUDY, "1.2.3.4.5", received(spool, b"first"))
    spool.put_instance(STUDY, "1.2.3.4.5", received(spool, b"again"))
    assert first.read_bytes() == b"again"
    assert not list(spool.folder("tmp").iterdir())
    with pytest.raises(ValueError):
        spool.put_instance("../../etc", "1.2", received(spool, b"x"))


def test_a_study_closes_only_when_quiet_and_later_instances_open_it_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.put_instance(STUDY, "1.2.3.4.5", received(spool, b"x"))
    study = spool.folder("incoming") / STUDY
    assert spool.quiet_studies(60) == []
    os.utime(study, (0, 0))
    [quiet] = spool.quiet_studies(60)
    batch = spool.close_study(quiet)
    assert [path.name for path in batch.iterdir()] == ["1.2.3.4.5.dcm"]
    spool.put_instance(STUDY, "1.2.3.4.6", received(spool, b"y"))
    assert [path.name for path in study.iterdir()] == ["1.2.3.4.6.dcm"]
    assert spool.batches() == [batch]
    assert Spool(tmp_path).recover() == 1  # a restart finds the batch still to score


def test_unreachable_destination_is_retried_then_dead_lettered(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    destination = DicomDestination(ae_title="PACS", host="127.0.0.1", port=free_port())
    source = small_dicom(tmp_path / "sc-1.2.dcm")
    spool.queue_result(destination.key, source)
    metrics = NodeMetrics()
    sender = CStoreSender(destination, "SQUID", Settings())
    dispatcher = Dispatcher(spool, {destination.key: sender}, metrics, attempts=2, retry_seconds=60)
    assert dispatcher.round(now=0.0) == 0
    [item] = spool.pending(destination.key)
    assert read_attempts(item) == 1
    assert dispatcher.round(now=1.0) == 0  # not due yet: no second attempt
    assert read_attempts(item) == 1
    assert dispatcher.round(now=61.0) == 0
    assert spool.pending(destination.key) == []
    assert [path.name for path in (spool.folder("dead") / destination.key).glob("*.dcm")] == [source.name]
    assert metrics.dead.labels(destination.key)._value.get() == 1


def test_destinations_come_from_one_json_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUID_DICOM_DESTINATIONS", '[{"ae_title": "PACS", "host": "pacs", "port": 104}]')
    monkeypatch.setenv("SQUID_DICOM_ALLOWED_AES", '["MODALITY"]')
    settings = Settings()
    assert settings.dicom_destinations[0].key == "PACS@pacs"
    assert settings.dicom_allowed_aes == ["MODALITY"]
    assert (settings.dicom_ae_title, settings.dicom_port) == ("SQUID", 11112)
    monkeypatch.setenv("SQUID_DICOM_AE_TITLE", "A_TITLE_LONGER_THAN_16")
    with pytest.raises(ValueError):
        Settings()


def test_node_never_imports_torch_or_training() -> None:
    code = (
        "import sys\n"
        "import service.node.node, service.node.dicomweb, cli.node, cli.jobs\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.split('.')[0] == 'training']\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
