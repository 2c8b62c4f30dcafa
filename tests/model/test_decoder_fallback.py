"""The decoders of last resort and what a user sees when decoding fails (issue 26, deliverable 3).

WG04's 12-bit lossy JPEGs (JPLY), which pydicom's plugins refuse, are read by libjpeg-turbo like
DCMTK and GDCM read them. GDCM is tried last, in a child process: a JPEG 2000 Part 2 file (no pydicom
decoder exists for its transfer syntax) is real data only GDCM decodes here. A file nothing decodes
is one log line and an ``undecodable`` rejection: no traceback, no decoder chatter on the terminal.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.encaps import encapsulate, get_frame
from pydicom.uid import JPEG2000Lossless, JPEG2000MCLossless

from model.imaging import ImageRejected, gdcm_fallback, read_image
from tests.dicom_factory import make_dicom

WG04 = Path("dicom") / "wg04"


def relabelled(path: Path, **attributes: object) -> bytes:
    """The file with its body part set to CHEST (the gates then let it through) and ``attributes``."""
    ds = dcmread(path)
    ds.BodyPartExamined = "CHEST"
    for keyword, value in attributes.items():
        if keyword == "TransferSyntaxUID":
            ds.file_meta.TransferSyntaxUID = value
        else:
            setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.data
@pytest.mark.parametrize("image", ["RG2", "RG3"])
def test_the_wg04_12_bit_lossy_jpegs_decode_as_other_toolkits_read_them(
    shared_data: Path, image: str
) -> None:
    data = relabelled(shared_data / WG04 / "JPLY" / f"{image}_JPLY.dcm")
    decoded = read_image(data)
    assert "lossy_compressed" in decoded.warnings
    ds = dcmread(io.BytesIO(data))
    by_gdcm = gdcm_fallback.decode(data, ds.Rows, ds.Columns, 1, 2)
    by_turbo = imagecodecs.jpeg8_decode(get_frame(ds.PixelData, 0, number_of_frames=1))
    assert by_gdcm.shape == (ds.Rows, ds.Columns)
    # IDCT rounding only, except where the IDCT overshoots Bits Stored: GDCM wraps (1024 -> 0).
    in_range = by_turbo < (1 << int(ds.BitsStored))
    assert in_range.mean() > 0.9999
    assert int(np.abs(by_gdcm.astype(np.int32) - by_turbo)[in_range].max()) <= 1


@pytest.mark.data
def test_a_wg04_jply_chest_film_is_scored_by_squid_score_without_noise(
    shared_data: Path, tmp_path: Path
) -> None:
    path = tmp_path / "jply-chest.dcm"
    path.write_bytes(relabelled(shared_data / WG04 / "JPLY" / "RG2_JPLY.dcm"))
    # A hip film: the domain gate's image check would (rightly) refuse it; decoding is tested here.
    env = {**os.environ, "SQUID_DOMAIN_IMAGE_CHECK": "off"}
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "score", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "\tscore=" in done.stdout
    assert done.stderr == ""


@pytest.mark.data
def test_jpeg_2000_part_2_is_decoded_by_gdcm_after_the_others_refuse(
    shared_data: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    source = shared_data / WG04 / "J2KR" / "RG3_J2KR.dcm"
    part1 = read_image(relabelled(source))
    with caplog.at_level(logging.INFO, logger="model.imaging.frames"):
        part2 = read_image(relabelled(source, TransferSyntaxUID=JPEG2000MCLossless))
    np.testing.assert_array_equal(part2.pixels, part1.pixels)
    assert [record.getMessage().split(" after:")[0] for record in caplog.records] == [
        "pixel data decoded by gdcm"
    ]
    assert capfd.readouterr().err == ""


@pytest.mark.data
def test_a_file_no_decoder_reads_is_one_log_line_and_a_reason(
    shared_data: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    ds = dcmread(shared_data / WG04 / "J2KR" / "RG3_J2KR.dcm")
    ds.BodyPartExamined = "CHEST"
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    ds.PixelData = encapsulate([frame[: len(frame) * 9 // 10]])  # the last tenth of the codestream lost
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with caplog.at_level(logging.DEBUG), pytest.raises(ImageRejected) as info:
        read_image(buffer.getvalue())
    assert info.value.reason == "undecodable"
    for decoder in ("imagecodecs", "pylibjpeg", "gdcm"):
        assert f"{decoder}:" in info.value.detail
    assert [(r.name, r.levelname) for r in caplog.records] == [("model.imaging.frames", "WARNING")]
    assert "Traceback" not in caplog.text
    assert capfd.readouterr().err == ""


def test_the_gdcm_child_dies_alone_when_a_frame_needs_more_than_its_memory_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ds = dcmread(io.BytesIO(make_dicom(np.zeros((64, 64), np.uint16), transfer_syntax=JPEG2000Lossless)))
    ds.file_meta.TransferSyntaxUID = JPEG2000MCLossless
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    assert gdcm_fallback.decode(data, 64, 64, 1, 2).shape == (64, 64)
    monkeypatch.setattr(gdcm_fallback, "BASE_ADDRESS_SPACE", 32 << 20)  # less than Python needs
    with pytest.raises(RuntimeError, match="GDCM failed"):
        gdcm_fallback.decode(data, 64, 64, 1, 2)


def test_gdcm_never_runs_in_this_process() -> None:
    """pydicom would try GDCM first, and GDCM aborts the process on an odd-width 8-bit RLE encode."""
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.pixels.encoders.base import get_encoder
    from pydicom.uid import JPEGBaseline8Bit, JPEGLSLossless, RLELossless

    for syntax in (RLELossless, JPEGLSLossless, JPEGBaseline8Bit, JPEG2000Lossless):
        assert "gdcm" not in get_decoder(syntax).available_plugins
    assert "gdcm" not in get_encoder(RLELossless).available_plugins


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_rle_is_decoded_into_its_byte_lanes_exactly(bits: int) -> None:
    from pydicom.uid import RLELossless

    dtype = np.uint8 if bits == 8 else np.uint16
    pixels = np.random.default_rng(bits).integers(0, 2**bits, (301, 257)).astype(dtype)
    compressed = read_image(make_dicom(pixels, bits_stored=bits, transfer_syntax=RLELossless)).pixels
    np.testing.assert_array_equal(compressed, read_image(make_dicom(pixels, bits_stored=bits)).pixels)
