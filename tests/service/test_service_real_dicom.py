"""Every real DICOM file in ../shared/data/dicom over HTTP: scored, or refused with the right reason.

Pixel-level decoding (orientation, polarity, codecs) is unit-tested in tests/model; here the server
must give exactly the in-process score of the shared pipeline and the documented error contract.
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from http_support import decode_png_b64, local_score
from pydicom import dcmread

from model.imaging import read_path
from model.runtime import SquidRuntime
from tests.shared_files import FO_CHEST, HIGHDICOM, JPLY_FIXED, TXV, TXV_MONO1, WG04_CODECS


def wg04(image: str, codec: str) -> str:
    return f"wg04/{codec}/{image}_{'UNC' if codec == 'REF' else codec}.dcm"


# relative path -> None (scored) or the domain gate's reasons. WG04 images are a hip and an
# extremity (their headers say so); the highdicom DX is a dog's thorax, and Fake_MONOHR1 is a chest
# film relabelled MONOCHROME1, so it displays inverted: neither looks like a frontal chest film.
EXPECTED: dict[str, list[str] | None] = {
    FO_CHEST: None,
    HIGHDICOM: ["not_a_chest_radiograph"],
    TXV: None,
    TXV_MONO1: ["not_a_chest_radiograph"],
    JPLY_FIXED: ["body_part"],
    **{wg04(image, codec): ["body_part"] for image in ("RG2", "RG3") for codec in WG04_CODECS},
}


@pytest.fixture(scope="module")
def dicom_dir(shared_data: Path) -> Path:
    folder = shared_data / "dicom"
    if not folder.is_dir():
        pytest.skip(f"no DICOM folder in {shared_data}")
    return folder


@pytest.mark.data
def test_every_shared_dicom_file_has_an_expectation(dicom_dir: Path) -> None:
    found = {p.relative_to(dicom_dir).as_posix() for p in dicom_dir.rglob("*.dcm")}
    assert found == set(EXPECTED)


@pytest.mark.data
@pytest.mark.parametrize("relative", sorted(EXPECTED))
def test_shared_dicom_over_http(
    client: httpx.Client, local_runtime: SquidRuntime, dicom_dir: Path, relative: str
) -> None:
    data = (dicom_dir / relative).read_bytes()
    response = client.post("/score", files={"file": (Path(relative).name, data, "application/dicom")})
    expected = EXPECTED[relative]
    if expected is None:
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["input"]["format"] == "dicom"
        assert body["score"] == local_score(local_runtime, data)
        assert body["is_anomalous"] == (body["score"] >= body["threshold"])
    else:
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert (error["reason"], error["reasons"]) == ("out_of_domain", expected)
        assert "score" not in response.json() and "is_anomalous" not in response.json()


@pytest.mark.data
@pytest.mark.parametrize("image", ["RG2", "RG3"])
def test_wg04_12_bit_lossy_jpeg_originals_labelled_chest_are_decoded_and_judged(
    client: httpx.Client, dicom_dir: Path, image: str
) -> None:
    """The WG04 JPLY originals, which pydicom's plugins refuse (a scan header libjpeg rejects), are
    read by libjpeg-turbo as DCMTK and GDCM read them: relabelled as a chest, they pass the header
    rules, decode, and the image check sees what they are (a hip, an extremity)."""
    ds = dcmread(dicom_dir / wg04(image, "JPLY"), force=True)
    ds.BodyPartExamined = "CHEST"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    response = client.post("/score", files={"file": ("a.dcm", buffer.getvalue())})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["reason"], error["reasons"]) == ("out_of_domain", ["not_a_chest_radiograph"])
    assert "lossy_compressed" in error["warnings"]


@pytest.mark.data
def test_preview_is_the_decoded_picture_with_bones_white(client: httpx.Client, dicom_dir: Path) -> None:
    """The MONOCHROME1 chest comes back inverted to bone-white, exactly as the library decodes it."""
    path = dicom_dir / FO_CHEST
    body = client.post("/score", params={"preview": "true"}, files={"file": ("a", path.read_bytes())}).json()
    preview = decode_png_b64(body["preview_png_base64"]).astype(np.float64)
    pixels = read_path(path).pixels.astype(np.float64)
    expected = np.round((pixels - pixels.min()) / np.ptp(pixels) * 255)
    assert preview.shape == expected.shape
    assert np.abs(preview - expected).max() <= 1
