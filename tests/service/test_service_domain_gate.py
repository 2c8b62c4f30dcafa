"""The domain gate through the channels: ``POST /score`` (strict and a site's relaxed settings) and
``squid score`` (text and ``--json``), on real files: pydicom's CT and MR, a colour ultrasound,
the sample chest film as an adult's DICOM, a lateral named only in its description, blank and tiny
images. Batch rows and the DICOM node are tested in tests/jobs and tests/node."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from dicom_factory import make_dicom
from http_support import REPO_ROOT, Server, chest_like, serving
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file

from model.imaging import read_path

CT_SMALL = Path(str(get_testdata_file("CT_small.dcm")))


def png(array: np.ndarray[Any, Any]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def slice_png(name: str) -> bytes:
    """A CT or MR slice of pydicom's test files, exported as an 8-bit PNG (no tags left)."""
    pixels = read_path(str(get_testdata_file(name)), header_rules=()).pixels
    return png(((pixels - pixels.min()) / np.ptp(pixels) * 255).astype(np.uint8))


def adult_dicom() -> bytes:
    return make_dicom(chest_like(256, 224), bits_stored=12, extra={"PatientAge": "045Y"})


CASES: dict[str, tuple[bytes, list[str]]] = {}  # name -> (file, the gate's reasons), filled lazily


def cases() -> dict[str, tuple[bytes, list[str]]]:
    if not CASES:
        ultrasound = np.ascontiguousarray(dcmread(get_testdata_file("examples_rgb_color.dcm")).pixel_array)
        CASES.update(
            {
                "ct.dcm": (CT_SMALL.read_bytes(), ["modality"]),
                "ct-slice.png": (slice_png("CT_small.dcm"), ["not_a_chest_radiograph"]),
                "mr-slice.png": (slice_png("MR_small.dcm"), ["not_a_chest_radiograph"]),
                "photo.png": (png(ultrasound), ["color_image"]),
                "grey.png": (png(np.full((300, 300), 128, np.uint8)), ["blank_image"]),
                "tiny.png": (png(chest_like(8, 8, top=255).astype(np.uint8)), ["image_too_small"]),
                "slope0.dcm": (make_dicom(chest_like(), bits_stored=12, rescale=(0.0, 7.0)), ["blank_image"]),
                "lateral.dcm": (
                    make_dicom(
                        chest_like(),
                        bits_stored=12,
                        view_position="",
                        extra={"SeriesDescription": "CHEST LAT"},
                    ),
                    ["view"],
                ),
            }
        )
    return CASES


@pytest.mark.parametrize(
    "name",
    [
        "ct.dcm",
        "ct-slice.png",
        "mr-slice.png",
        "photo.png",
        "grey.png",
        "tiny.png",
        "slope0.dcm",
        "lateral.dcm",
    ],
)
def test_score_answers_out_of_domain_with_reasons_and_no_label(client: httpx.Client, name: str) -> None:
    data, reasons = cases()[name]
    response = client.post("/score", files={"file": (name, data)})
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"error"}  # no score, no is_anomalous
    assert body["error"]["reason"] == "out_of_domain"
    assert body["error"]["reasons"] == reasons


def test_an_adult_dicom_is_scored_with_the_population_warning(client: httpx.Client) -> None:
    response = client.post("/score", files={"file": ("adult.dcm", adult_dicom())})
    assert response.status_code == 200, response.text
    body = response.json()
    assert "outside_training_population" in body["warnings"]
    assert isinstance(body["is_anomalous"], bool)
    assert "patient_age" not in json.dumps(body).lower() and "045Y" not in response.text


@pytest.fixture(scope="module")
def relaxed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A site that trusts no view tags, wants no age warning and only advice from the image check."""
    with serving(
        tmp_path_factory.mktemp("relaxed") / "server.log",
        SQUID_DOMAIN_IMAGE_CHECK="advisory",
        SQUID_DOMAIN_VIEW_RULE="false",
        SQUID_DOMAIN_AGE_RULE="false",
    ) as running:
        yield running


def test_settings_switch_rules_off_and_make_the_image_check_advisory(relaxed: Server) -> None:
    with relaxed.client() as http:
        gate = http.get("/model").json()["serving"]["domain_gate"]
        assert gate == {
            "header_rules": ["body_part", "modality"],
            "age_rule": False,
            "image_check": "advisory",
            "image_check_available": True,
        }
        lateral = http.post("/score", files={"file": ("lateral.dcm", cases()["lateral.dcm"][0])})
        assert lateral.status_code == 200 and "outside_training_population" not in lateral.json()["warnings"]
        slice_ = http.post("/score", files={"file": ("ct-slice.png", cases()["ct-slice.png"][0])})
        assert slice_.status_code == 200, slice_.text
        assert "not_a_chest_radiograph" in slice_.json()["warnings"]
        ct = http.post("/score", files={"file": ("ct.dcm", cases()["ct.dcm"][0])})  # modality stays on
        assert ct.status_code == 422 and ct.json()["error"]["reasons"] == ["modality"]
    assert relaxed.metric("squid_domain_warnings_total", {"warning": "not_a_chest_radiograph"}) == 1
    assert relaxed.metric("squid_out_of_domain_total", {"reason": "modality"}) == 1


def run_score(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SQUID_")}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "score", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_squid_score_text_and_json(tmp_path: Path) -> None:
    files = []
    for name, (data, _) in cases().items():
        files.append(tmp_path / name)
        files[-1].write_bytes(data)
    adult = tmp_path / "adult.dcm"
    adult.write_bytes(adult_dicom())
    sample = REPO_ROOT / "samples" / "normal-IM-0372-0001.jpeg"
    text = run_score(*map(str, files), str(adult), str(sample))
    assert text.returncode == 1, text.stderr  # some files were not scored
    lines = dict(line.split("\t", 1) for line in text.stdout.splitlines())
    for name, (_, reasons) in cases().items():
        assert lines[str(tmp_path / name)].startswith(f"out_of_domain\t{reasons[0]}"), lines
    assert lines[str(sample)].startswith("score=") and "warning=" not in lines[str(sample)]
    assert lines[str(adult)].endswith("warning=outside_training_population")
    as_json = run_score("--json", *map(str, files), str(adult))
    rows = {row["file"]: row for row in map(json.loads, as_json.stdout.splitlines())}
    for name, (_, reasons) in cases().items():
        row = rows[str(tmp_path / name)]
        assert row["status"] == "out_of_domain" and row["reasons"] == reasons
        assert "score" not in row and "label" not in row
    assert (
        rows[str(adult)]["status"] == "scored"
        and "outside_training_population" in rows[str(adult)]["warnings"]
    )
