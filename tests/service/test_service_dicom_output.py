"""DICOM results from the entry points: ``POST /score?output=sr|sc`` and ``squid score --dicom-out``."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from dicom_factory import make_dicom
from dicom_results_support import dciodvfy_errors, requires_dciodvfy, sr_content
from http_support import REPO_ROOT, Server, chest_like, decode_png_b64
from PIL import Image
from pydicom import dcmread

from model.dicom_results import Skip
from model.dicom_results import codes as sr_codes
from model.dicom_results.sc import MAX_SIDE, MIN_WIDTH

SAMPLE = REPO_ROOT / "samples" / "normal-IM-0372-0001-MONOCHROME1.dcm"
SAMPLE_PNG_TWIN = REPO_ROOT / "samples" / "normal-IM-0372-0001.jpeg"
NAME, PATIENT_ID = "Quimbyfrost^Sentinel", "SENTINEL-DCM-77031"


def post(client: httpx.Client, data: bytes, **params: str) -> httpx.Response:
    return client.post("/score", content=data, headers={"Content-Type": "application/dicom"}, params=params)


def sc_image_region(sc_pixels: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """The overlay part of a capture (above the text band), for a source of ``rows`` x ``columns``."""
    scale = min(1.0, MAX_SIDE / max(rows, columns))
    width = max(1, round(columns * scale))
    factor = max(1, -(-MIN_WIDTH // width))
    return sc_pixels[: max(1, round(rows * scale)) * factor, : width * factor]


@requires_dciodvfy
def test_score_answers_the_sr_and_sc_of_a_dicom_upload(client: httpx.Client, tmp_path: Path) -> None:
    data = SAMPLE.read_bytes()
    answer = post(client, data, heatmap="true").json()
    source = dcmread(SAMPLE, stop_before_pixels=True)
    sop_uids = {}
    for output in ("sr", "sc"):
        response = post(client, data, output=output)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/dicom"
        path = tmp_path / f"{output}.dcm"
        path.write_bytes(response.content)
        assert dciodvfy_errors(path) == []
        ds = dcmread(path)
        assert ds.StudyInstanceUID == source.StudyInstanceUID == answer["input"]["study_instance_uid"]
        assert ds.SOPInstanceUID in response.headers["content-disposition"]
        sop_uids[output] = ds.SOPInstanceUID
    sr = sr_content(dcmread(tmp_path / "sr.dcm"))
    assert sr.numbers[sr_codes.ANOMALY_SCORE.value] == answer["score"]  # the very float the JSON carries
    assert sr.numbers[sr_codes.RAW_SCORE.value] == answer["raw_score"]
    assert sr.numbers[sr_codes.THRESHOLD.value] == answer["threshold"]
    assert sr.images == [(str(source.SOPClassUID), str(source.SOPInstanceUID))]

    # The capture shows the heatmap the JSON answer carries (at a larger size, with a text band).
    heatmap = decode_png_b64(answer["heatmap_png_base64"]).astype(np.float64)
    region = sc_image_region(
        dcmread(tmp_path / "sc.dcm").pixel_array, answer["input"]["rows"], answer["input"]["columns"]
    )
    shrunk = np.asarray(Image.fromarray(region).resize(heatmap.shape[1::-1], Image.Resampling.BILINEAR))
    difference = np.abs(shrunk.astype(np.float64) - heatmap).mean()
    assert difference < 3.0, difference
    mirrored = np.abs(shrunk.astype(np.float64) - heatmap[:, ::-1]).mean()
    assert mirrored > 5 * difference, mirrored  # the comparison can tell a different picture

    for output in ("sr", "sc"):  # a second request files the same instances again
        again = dcmread(io.BytesIO(post(client, data, output=output).content))
        assert again.SOPInstanceUID == sop_uids[output]


def test_png_and_jpeg_get_a_clear_422_for_dicom_outputs(client: httpx.Client) -> None:
    for output in ("sr", "sc"):
        response = client.post(
            "/score", files={"file": ("x.jpeg", SAMPLE_PNG_TWIN.read_bytes())}, params={"output": output}
        )
        assert response.status_code == 422
        assert response.json()["error"]["reason"] == Skip.NOT_DICOM
    assert client.post("/score", content=b"", params={"output": "pdf"}).status_code == 422


def test_a_dicom_without_study_uid_gets_a_reason_and_identifiers_stay_out_of_the_logs(
    server: Server, client: httpx.Client
) -> None:
    identity = {"patient_name": NAME, "patient_id": PATIENT_ID}
    no_study = make_dicom(chest_like(96, 96), modality="CR", extra={"StudyInstanceUID": ""}, **identity)
    response = post(client, no_study, output="sr")
    assert response.status_code == 422 and response.json()["error"]["reason"] == Skip.MISSING_UIDS
    filed = post(client, make_dicom(chest_like(96, 96), modality="CR", **identity), output="sr")
    assert filed.status_code == 200
    assert dcmread(io.BytesIO(filed.content)).PatientID == PATIENT_ID  # the one place it is written
    logs = server.logs()
    for sentinel in (PATIENT_ID, "Quimbyfrost"):
        assert sentinel not in logs and sentinel not in response.text


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "score", "--json", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@requires_dciodvfy
def test_cli_writes_the_sr_and_sc_of_a_held_out_chest_cr(tmp_path: Path) -> None:
    out = tmp_path / "pacs"
    run = run_cli(str(SAMPLE), str(SAMPLE_PNG_TWIN), "--dicom-out", str(out))
    assert run.returncode == 0, run.stderr
    dicom_row, jpeg_row = (json.loads(line) for line in run.stdout.splitlines())
    assert jpeg_row["dicom_skipped"]["reason"] == Skip.NOT_DICOM and "dicom" not in jpeg_row
    files = {kind: Path(path) for kind, path in dicom_row["dicom"].items()}
    assert set(files) == {"sr", "sc"} and sorted(out.iterdir()) == sorted(files.values())
    source = dcmread(SAMPLE, stop_before_pixels=True)
    for path in files.values():
        assert dciodvfy_errors(path) == []
        ds = dcmread(path)
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    sr = sr_content(dcmread(files["sr"]))
    assert sr.numbers[sr_codes.ANOMALY_SCORE.value] == pytest.approx(dicom_row["score"], abs=5e-7)
    assert sr.images == [(str(source.SOPClassUID), str(source.SOPInstanceUID))]
    assert dcmread(files["sc"]).SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID

    again = run_cli(str(SAMPLE), "--dicom-out", str(out))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["dicom"] == dicom_row["dicom"]  # same UIDs, same files: replaced
    assert sorted(out.iterdir()) == sorted(files.values())
