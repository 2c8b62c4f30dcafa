"""PNG/JPEG in every mode and synthesised DICOM header cases, scored over HTTP.

The strongest check is "same picture, same score": the server must give one score to one picture
whatever container, bit depth, photometric interpretation, rescale or signedness carried it.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from dicom_factory import make_dicom
from http_support import chest_like, decode_png_b64, encode, local_score, png_gray
from numpy.typing import NDArray
from PIL import Image
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from model.runtime import SquidRuntime

SAME = 1e-4  # the tolerance for "the same score"


def post(client: httpx.Client, data: bytes, **params: str) -> dict:
    response = client.post("/score", files={"file": ("upload", data)}, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def unit(values: NDArray[np.generic]) -> NDArray[np.float64]:
    v = np.asarray(values, dtype=np.float64)
    return (v - v.min()) / np.ptp(v)


def assert_preview(body: dict, expected: NDArray[np.generic], levels: float = 1.0) -> None:
    """The decoded picture (8-bit preview) matches ``expected`` up to min-max and rounding."""
    preview = decode_png_b64(body["preview_png_base64"]).astype(np.float64)
    target = np.round(unit(expected) * 255)
    assert preview.shape == target.shape
    assert np.abs(preview - target).max() <= levels


# --- same picture, same score -----------------------------------------------------------------------


@pytest.mark.parametrize("top", [255, 4095, 65535])
def test_png_monochrome2_and_monochrome1_dicom_of_one_picture_score_the_same(
    client: httpx.Client, top: int
) -> None:
    v = chest_like(top=top)
    bits = 8 if top == 255 else 16
    png = post(client, png_gray(v, bits=bits))
    mono2 = post(client, make_dicom(v, bits_stored=16))
    mono1 = post(client, make_dicom(65535 - v, bits_stored=16, photometric="MONOCHROME1"))
    mono1_tight = post(client, make_dicom(top - v, bits_stored=16, photometric="MONOCHROME1"))
    assert mono2["input"]["photometric_interpretation"] == "MONOCHROME2"
    assert mono1["input"]["photometric_interpretation"] == "MONOCHROME1"
    for other in (mono2, mono1, mono1_tight):
        assert other["score"] == pytest.approx(png["score"], abs=SAME)
        assert other["raw_score"] == pytest.approx(png["raw_score"], rel=1e-6)


@pytest.mark.parametrize(
    ("name", "dicom_kwargs", "stored", "picture"),
    [
        ("rescale slope/intercept", {"rescale": (2.5, -1000.0)}, lambda v: v, lambda v: v),
        # stored inverted, so the picture is an upright film (an inverted one is out of domain)
        ("negative rescale slope", {"rescale": (-1.0, 4095.0)}, lambda v: 4095 - v, lambda v: v),
        ("signed pixels", {"signed": True}, lambda v: v - 2048, lambda v: v),
        (
            "MONOCHROME1 + INVERSE",
            {"photometric": "MONOCHROME1", "presentation_lut_shape": "INVERSE"},
            lambda v: 4095 - v,
            lambda v: v,
        ),
        ("linear window over the full range", {"window": (2048, 4096)}, lambda v: v, lambda v: v),
    ],
)
def test_dicom_header_cases_score_like_the_png_of_their_picture(
    client: httpx.Client, name: str, dicom_kwargs: dict, stored, picture
) -> None:
    v = chest_like(top=4095, seed=3)
    dicom = post(client, make_dicom(stored(v), bits_stored=12, **dicom_kwargs), preview="true")
    png = post(client, png_gray(picture(v)))
    assert dicom["score"] == pytest.approx(png["score"], abs=SAME), name
    assert_preview(dicom, picture(v))


def test_voi_lut_sequence_is_applied(client: httpx.Client, local_runtime: SquidRuntime) -> None:
    v = 4095 - chest_like(top=4095, seed=5)  # stored inverted: the inverting LUT shows it upright
    lut = [min(4095, 4095 - 2 * i) if i < 2048 else 0 for i in range(4096)]  # inverting, clipped
    data = make_dicom(v, bits_stored=12, window=(100, 50), voi_lut_sequence=(0, 16, lut))
    body = post(client, data, preview="true")
    assert "no_voi_window_full_range" not in body["warnings"]
    assert_preview(body, np.asarray(lut)[v])  # the sequence wins over the (nonsense) window
    assert body["score"] == local_score(local_runtime, data)


def test_sigmoid_voi_function_is_applied(client: httpx.Client, local_runtime: SquidRuntime) -> None:
    v = chest_like(top=4095, seed=6)
    center, width = 1800.0, 1200.0
    data = make_dicom(v, bits_stored=12, window=(center, width), voi_lut_function="SIGMOID")
    body = post(client, data, preview="true")
    expected = 1.0 / (1.0 + np.exp(-4.0 * (v - center) / width))
    assert_preview(body, expected)
    assert body["score"] == local_score(local_runtime, data)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless])
def test_lossless_transfer_syntaxes_score_like_uncompressed(client: httpx.Client, syntax: str) -> None:
    v = chest_like(top=4095, seed=7)
    plain = post(client, make_dicom(v, bits_stored=12))
    compressed = post(client, make_dicom(v, bits_stored=12, transfer_syntax=syntax))
    assert compressed["input"]["transfer_syntax"] == syntax
    assert compressed["score"] == pytest.approx(plain["score"], abs=SAME)


def test_dicom_without_file_meta_is_read(client: httpx.Client) -> None:
    v = chest_like(top=4095, seed=8)
    body = post(client, make_dicom(v, bits_stored=12, no_file_meta=True))
    assert "missing_file_meta" in body["warnings"]
    assert body["score"] == pytest.approx(post(client, png_gray(v))["score"], abs=SAME)


# --- PNG / JPEG modes -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gray8() -> NDArray[np.uint8]:
    return chest_like(top=255, seed=9).astype(np.uint8)


@pytest.fixture(scope="module")
def gray8_score(client: httpx.Client, gray8: NDArray[np.uint8]) -> float:
    return float(post(client, png_gray(gray8, bits=8))["score"])


def palette_png(values: NDArray[np.uint8]) -> bytes:
    image = Image.fromarray(values).convert("P")  # exact: 256 gray levels fit the palette
    image.putpalette([level for i in range(256) for level in (i, i, i)])
    image.putdata(values.ravel().tolist())
    return encode(image)


@pytest.mark.parametrize(
    ("mode", "make", "photometric", "bits"),
    [
        ("L", lambda g: encode(Image.fromarray(g)), "MONOCHROME2", 8),
        ("I;16", lambda g: png_gray(g.astype(np.uint16) * 257), "MONOCHROME2", 16),
        ("RGB", lambda g: encode(Image.fromarray(np.stack([g] * 3, -1))), "RGB", 8),
        ("RGBA", lambda g: encode(Image.fromarray(np.dstack([g, g, g, np.full_like(g, 255)]))), "RGB", 8),
        ("LA", lambda g: encode(Image.fromarray(g).convert("LA")), "MONOCHROME2", 8),
        ("P", palette_png, "PALETTE COLOR", 8),
    ],
)
def test_png_modes_give_the_gray_picture(
    client: httpx.Client,
    gray8: NDArray[np.uint8],
    gray8_score: float,
    mode: str,
    make,
    photometric: str,
    bits: int,
) -> None:
    body = post(client, make(gray8))
    assert body["input"]["format"] == "png"
    assert body["input"]["photometric_interpretation"] == photometric
    assert body["input"]["bits_stored"] == bits
    assert body["score"] == pytest.approx(gray8_score, abs=SAME), mode
    assert "color_converted_to_gray" not in body["warnings"]


def test_coloured_and_transparent_pngs_are_flagged(client: httpx.Client, gray8: NDArray[np.uint8]) -> None:
    """A coloured picture is no radiograph (the domain gate's color_image); transparency is a warning."""
    tinted = np.dstack([gray8, (gray8 * 0.6).astype(np.uint8), np.zeros_like(gray8)])
    response = client.post(
        "/score", content=encode(Image.fromarray(tinted)), headers={"content-type": "image/png"}
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["reason"], error["reasons"]) == ("out_of_domain", ["color_image"])
    assert "color_converted_to_gray" in error["warnings"]
    holes = np.dstack([gray8, gray8, gray8, np.where(gray8 > 128, 255, 0).astype(np.uint8)])
    assert "alpha_channel_ignored" in post(client, encode(Image.fromarray(holes)))["warnings"]


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_modes(client: httpx.Client, gray8: NDArray[np.uint8], mode: str) -> None:
    image = Image.fromarray(gray8).convert(mode)
    body = post(client, encode(image, "JPEG", quality=95), preview="true")
    assert body["input"]["format"] == "jpeg"
    assert "lossy_compressed" in body["warnings"]
    assert_preview(body, gray8, levels=24)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_applied(client: httpx.Client, gray8: NDArray[np.uint8], fmt: str) -> None:
    """Stored rotated with an EXIF tag saying so: the server must see the upright picture."""
    upright = Image.fromarray(gray8)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6 = rotate 270 CCW to view
    exif = Image.Exif()
    exif[0x0112] = 6
    options: dict = {"exif": exif.tobytes()}
    if fmt == "JPEG":
        options["quality"] = 95
    body = post(client, encode(stored, fmt, **options), preview="true")
    assert "exif_orientation_applied" in body["warnings"]
    assert (body["input"]["rows"], body["input"]["columns"]) == gray8.shape
    assert_preview(body, gray8, levels=1 if fmt == "PNG" else 24)
    if fmt == "PNG":
        assert body["score"] == pytest.approx(post(client, encode(upright))["score"], abs=SAME)


def test_decompression_bomb_is_refused_before_decoding(client: httpx.Client) -> None:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 200_000, 200_000, 8, 0, 0, 0, 0)  # 40 G pixels declared
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
    response = client.post("/score", files={"file": ("bomb.png", bomb + chunk(b"IEND", b""))})
    assert response.status_code == 422
    assert response.json()["error"]["reason"] == "image_too_large"
