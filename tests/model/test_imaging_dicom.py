"""DICOM reading: real files from ../shared/data and synthesised headers no real file has."""

from __future__ import annotations

import functools
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from dicom_factory import make_dicom
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.typing import NDArray
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing
from pydicom.uid import (
    JPEG2000,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from model.imaging import (
    HEADER_RULES,
    DecodedImage,
    ImageInfo,
    ImageRejected,
    OutOfDomain,
    read_image,
    read_path,
)
from model.imaging.detect import detect_format, looks_like_bare_dicom
from model.imaging.privacy import REDACTED, Scrubber
from service.errors import image_status
from tests.shared_files import FO_CHEST, HIGHDICOM, JPLY_FIXED, TXV, TXV_MONO1, WG04_CODECS

WG04_FILE = {"REF": "UNC"}
LOSSLESS = ("RLE", "JPLL", "JLSL", "J2KR")
LOSSY = ("JLSN", "J2KI")


def wg04(image: str, codec: str) -> str:
    return f"wg04/{codec}/{image}_{WG04_FILE.get(codec, codec)}.dcm"


# relative path -> (outcome with gates on, outcome with gates off); None means it decodes.
# WG04 images are a hip (RG2) and an extremity (RG3): out of domain (body_part) before any decode.
# The two JPLY originals are known-bad (a scan header that pydicom's plugins refuse, libjpeg error
# -1038); libjpeg-turbo, like DCMTK and GDCM, reads them.
EXPECTED: dict[str, tuple[str | None, str | None]] = {
    FO_CHEST: (None, None),
    HIGHDICOM: (None, None),
    JPLY_FIXED: ("out_of_domain", None),
    TXV: (None, None),
    TXV_MONO1: (None, None),
    **{wg04(image, codec): ("out_of_domain", None) for image in ("RG2", "RG3") for codec in WG04_CODECS},
}


@pytest.fixture(scope="module")
def dicom_dir(shared_data: Path) -> Path:
    folder = shared_data / "dicom"
    if not folder.is_dir():
        pytest.skip(f"no DICOM folder in {shared_data}")
    return folder


@functools.cache
def decoded(path: Path) -> DecodedImage:
    """Each real file is decoded once per session (gates off: decoding is what is tested)."""
    return read_path(path, header_rules=())


def stored_pixels(path: Path) -> NDArray[np.float64]:
    ds = dcmread(path, force=True)
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return np.asarray(ds.pixel_array, dtype=np.float64)


def minmax(x: NDArray[np.generic]) -> NDArray[np.float64]:
    x = np.asarray(x, dtype=np.float64)
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def corr(a: NDArray[np.generic], b: NDArray[np.generic]) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def ramp(rows: int = 64, columns: int = 48, top: int = 4095) -> NDArray[np.int64]:
    """A smooth 2-D pattern covering 0..top, asymmetric so flips and inversions show."""
    y, x = np.mgrid[0:rows, 0:columns]
    pattern = np.sin(x / 7.0) + 0.5 * np.cos(y / 5.0) + (x * y) / (rows * columns)
    return np.rint(minmax(pattern) * top).astype(np.int64)


def rejected(data: bytes, **kwargs: object) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        read_image(data, **kwargs)  # type: ignore[arg-type]
    return info.value


def refused(data: bytes, **kwargs: object) -> list[str]:
    """The domain gate's header reasons for ``data`` (it must be refused as out of domain)."""
    error = rejected(data, **kwargs)
    assert isinstance(error, OutOfDomain) and (error.reason, image_status(error)) == ("out_of_domain", 422)
    return error.reasons


# --- real files ---------------------------------------------------------------------------------


@pytest.mark.data
def test_every_shared_dicom_file_has_an_expectation(dicom_dir: Path) -> None:
    present = {p.relative_to(dicom_dir).as_posix() for p in dicom_dir.rglob("*.dcm")}
    assert present == set(EXPECTED)


@pytest.mark.data
@pytest.mark.parametrize("gates", [True, False], ids=["gates", "no-gates"])
@pytest.mark.parametrize("relative", sorted(EXPECTED))
def test_shared_dicom_decodes_or_is_rejected_for_the_right_reason(
    dicom_dir: Path, relative: str, gates: bool
) -> None:
    path = dicom_dir / relative
    expected = EXPECTED[relative][0 if gates else 1]
    if expected is not None:
        with pytest.raises(ImageRejected) as info:
            read_path(path, header_rules=HEADER_RULES if gates else ())
        assert info.value.reason == expected
        if expected == "out_of_domain":
            assert isinstance(info.value, OutOfDomain) and info.value.reasons == ["body_part"]
        assert image_status(info.value) == 422
        return
    image = decoded(path) if not gates else read_path(path)
    ds = dcmread(path, force=True, stop_before_pixels=True)
    assert image.pixels.dtype == np.float32
    assert image.pixels.shape == (ds.Rows, ds.Columns)
    assert np.isfinite(image.pixels).all()
    assert image.pixels.max() > image.pixels.min()
    assert image.info.format == "dicom"
    assert (image.info.rows, image.info.columns) == image.pixels.shape
    assert image.info.bits_stored == ds.BitsStored
    json.dumps(image.info.to_dict())


@pytest.mark.data
@pytest.mark.parametrize("image", ["RG2", "RG3"])
@pytest.mark.parametrize("codec", LOSSLESS)
def test_wg04_lossless_codecs_equal_the_uncompressed_reference_exactly(
    dicom_dir: Path, image: str, codec: str
) -> None:
    reference = decoded(dicom_dir / wg04(image, "REF")).pixels
    np.testing.assert_array_equal(decoded(dicom_dir / wg04(image, codec)).pixels, reference)


@pytest.mark.data
@pytest.mark.parametrize(
    "relative",
    [wg04(image, c) for image in ("RG2", "RG3") for c in (*LOSSY, "JPLY")] + [JPLY_FIXED],
)
def test_wg04_lossy_codecs_are_close_to_the_reference(dicom_dir: Path, relative: str) -> None:
    reference = decoded(dicom_dir / wg04(relative.split("/")[-1][:3], "REF")).pixels
    image = decoded(dicom_dir / relative)
    assert np.abs(image.pixels - reference).mean() < 0.01
    assert corr(image.pixels, reference) > 0.999
    assert "lossy_compressed" in image.warnings


@pytest.mark.data
def test_wg04_monochrome1_extremity_is_inverted_relative_to_stored_values(dicom_dir: Path) -> None:
    path = dicom_dir / wg04("RG3", "REF")
    assert corr(decoded(path).pixels, stored_pixels(path)) < -0.95


@pytest.mark.data
def test_torchxrayvision_fake_monochrome1_copy_is_the_exact_inverse(dicom_dir: Path) -> None:
    original, relabelled = read_path(dicom_dir / TXV), read_path(dicom_dir / TXV_MONO1)
    assert corr(original.pixels, relabelled.pixels) < -0.9999
    np.testing.assert_allclose(minmax(original.pixels), 1.0 - minmax(relabelled.pixels), atol=1e-6)


@pytest.mark.data
def test_torchxrayvision_metadata(dicom_dir: Path) -> None:
    image = read_path(dicom_dir / TXV)
    info = image.info
    assert (info.modality, info.view_position, info.body_part) == ("CR", "PA", "CHEST")
    assert info.transfer_syntax == "1.2.840.10008.1.2.4.50"
    assert info.transfer_syntax_name == "JPEG Baseline (Process 1)"
    assert info.sop_class_uid == "1.2.840.10008.5.1.4.1.1.7"
    assert info.photometric_interpretation == "MONOCHROME2"
    assert (info.rows, info.columns, info.bits_stored) == (1024, 1024, 8)
    assert {"lossy_compressed", "no_voi_window_full_range"} <= set(image.warnings)
    assert "missing_view_position" not in image.warnings


@pytest.mark.data
def test_highdicom_monochrome1_with_inverse_is_inverted_once(dicom_dir: Path) -> None:
    """MONOCHROME1 + PresentationLUTShape INVERSE is one inversion, not two that cancel.

    The DX IOD requires INVERSE exactly when the image is MONOCHROME1 (C.8.11.3), highdicom (which
    wrote this file) inverts once, and the content agrees: stored values are high in the air
    around the dog, so only the inverted image has dark air and white bone.
    """
    path = dicom_dir / HIGHDICOM
    image = read_path(path)
    assert corr(image.pixels, stored_pixels(path)) < -0.999
    p = image.pixels
    rows, cols = p.shape
    border = np.r_[p[: rows // 10].ravel(), p[-rows // 10 :].ravel()].mean()
    body = p[rows // 3 : 2 * rows // 3, cols // 3 : 2 * cols // 3].mean()
    assert border < body
    assert "presentation_lut_conflicts_photometric" not in image.warnings


@pytest.mark.data
def test_fo_dicom_chest_without_file_meta_has_white_bones_and_dark_lungs(dicom_dir: Path) -> None:
    path = dicom_dir / FO_CHEST
    assert looks_like_bare_dicom(path.read_bytes())
    image = read_path(path)
    assert image.info.transfer_syntax == ImplicitVRLittleEndian
    assert image.info.view_position == "PA"
    assert "missing_file_meta" in image.warnings
    p = image.pixels
    rows, cols = p.shape
    band = slice(int(0.3 * rows), int(0.7 * rows))
    mediastinum = p[band, int(0.45 * cols) : int(0.55 * cols)].mean()
    lungs = np.r_[
        p[band, int(0.2 * cols) : int(0.3 * cols)].ravel(),
        p[band, int(0.7 * cols) : int(0.8 * cols)].ravel(),
    ].mean()
    assert mediastinum > lungs + 0.2
    assert corr(p, stored_pixels(path)) < -0.99


# --- VOI LUT, windows, rescale, photometric -----------------------------------------------------


def test_voi_lut_sequence_is_applied_with_clamping_and_signed_first_mapped_value() -> None:
    stored = ramp(32, 40, top=1000) - 500  # signed, -500..500
    lut = np.rint(np.sqrt(np.arange(600) / 599.0) * 65535).astype(int)  # maps -200..399
    data = make_dicom(stored, bits_stored=12, signed=True, voi_lut_sequence=(-200, 16, lut))
    expected = lut[np.clip(stored + 200, 0, len(lut) - 1)] / 65535.0
    np.testing.assert_allclose(read_image(data).pixels, expected, atol=1e-6)


@pytest.mark.parametrize("syntax", [None, ImplicitVRLittleEndian])
def test_voi_lut_sequence_matches_pydicom_for_16_bit_entries(syntax: str | None) -> None:
    stored = ramp(top=4095)
    lut = np.rint((np.arange(4096) / 4095.0) ** 0.6 * 65535).astype(int)
    kwargs = {"transfer_syntax": syntax} if syntax else {}
    data = make_dicom(stored, bits_stored=12, voi_lut_sequence=(0, 16, lut), **kwargs)
    ds = dcmread(io.BytesIO(data))
    reference = apply_voi(ds.pixel_array, ds)
    np.testing.assert_allclose(read_image(data).pixels * 65535.0, reference, atol=0.01)


def test_voi_lut_with_8_bit_entries_and_more_than_256_entries_is_not_wrapped() -> None:
    stored = np.arange(1024).reshape(32, 32)
    lut = np.arange(1024) // 4
    data = make_dicom(stored, bits_stored=10, voi_lut_sequence=(0, 8, lut))
    np.testing.assert_allclose(read_image(data).pixels.ravel() * 255.0, lut, atol=1e-4)


@pytest.mark.parametrize("function", [None, "LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("rescale", [(1.0, 0.0), (2.0, -1024.0)])
def test_windowing_matches_pydicom_up_to_its_output_range(
    function: str | None, rescale: tuple[float, float]
) -> None:
    """pydicom returns windowed values in the modality range; ours are the same curve in [0, 1]."""
    stored = ramp(top=4095)
    center = 2048 * rescale[0] + rescale[1]
    width = 1500 * rescale[0]
    data = make_dicom(
        stored, bits_stored=12, window=(center, width), voi_lut_function=function, rescale=rescale
    )
    ds = dcmread(io.BytesIO(data))
    theirs = apply_windowing(apply_modality_lut(ds.pixel_array, ds), ds).ravel()
    ours = read_image(data).pixels.astype(np.float64).ravel()
    slope, intercept = np.polyfit(ours, theirs, 1)
    assert slope > 0
    np.testing.assert_allclose(slope * ours + intercept, theirs, atol=1e-3 * np.ptp(theirs))
    assert ours.min() >= 0.0 and ours.max() <= 1.0


def test_linear_window_values_follow_the_standard_formula() -> None:
    stored = np.array([[0, 74, 75, 100, 125, 126, 200, 100]])
    data = make_dicom(stored, bits_stored=8, window=(100, 51))
    # LINEAR, c=100, w=51: 0 at x <= 74.5, 1 above 124.5, ((x - 99.5) / 50 + 0.5) between.
    expected = np.clip((stored - 99.5) / 50.0 + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(read_image(data).pixels, expected, atol=1e-6)


def test_first_of_several_windows_is_used() -> None:
    stored = ramp(top=4095)
    single = read_image(make_dicom(stored, bits_stored=12, window=(1000, 800))).pixels
    several = read_image(make_dicom(stored, bits_stored=12, window=[(1000, 800), (3000, 200)])).pixels
    np.testing.assert_array_equal(several, single)


def test_rescale_slope_and_intercept_are_applied_before_the_window() -> None:
    raw = ramp(top=4095)
    window = (500.0, 3000.0)
    direct = make_dicom(raw - 1024, bits_stored=16, signed=True, window=window)
    rescaled = make_dicom(raw, bits_stored=12, rescale=(1.0, -1024.0), window=window)
    halved = make_dicom(raw // 2, bits_stored=12, rescale=(2.0, -1024.0), window=window)
    np.testing.assert_allclose(read_image(rescaled).pixels, read_image(direct).pixels, atol=1e-6)
    exact = np.clip(((raw // 2) * 2 - 1024 - (window[0] - 0.5)) / (window[1] - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(read_image(halved).pixels, exact, atol=1e-6)


def test_signed_pixels_keep_their_sign() -> None:
    stored = ramp(top=4095) - 2048
    image = read_image(make_dicom(stored, bits_stored=12, signed=True))
    np.testing.assert_allclose(image.pixels, minmax(stored), atol=1e-6)
    assert "no_voi_window_full_range" in image.warnings
    windowed = read_image(make_dicom(stored, bits_stored=12, signed=True, window=(-1000, 200)))
    assert windowed.pixels[stored < -1100].max() == 0.0
    assert windowed.pixels[stored > -900].min() == 1.0


@pytest.mark.parametrize(
    ("photometric", "shape", "stores_inverse", "conflict"),
    [
        ("MONOCHROME2", None, False, False),
        ("MONOCHROME2", "IDENTITY", False, False),
        ("MONOCHROME1", None, True, False),
        ("MONOCHROME1", "INVERSE", True, False),
        ("MONOCHROME2", "INVERSE", True, True),
        ("MONOCHROME1", "IDENTITY", False, True),
    ],
)
def test_polarity_rules(photometric: str, shape: str | None, stores_inverse: bool, conflict: bool) -> None:
    """Presentation LUT Shape decides when present; otherwise MONOCHROME1 inverts."""
    v = ramp(top=4095)
    stored = 4095 - v if stores_inverse else v
    image = read_image(
        make_dicom(stored, bits_stored=12, photometric=photometric, presentation_lut_shape=shape)
    )
    np.testing.assert_allclose(minmax(image.pixels), minmax(v), atol=1e-6)
    assert ("presentation_lut_conflicts_photometric" in image.warnings) is conflict


def test_monochrome1_is_inverted_after_the_window() -> None:
    v = ramp(top=4095)
    window = (1500.0, 1000.0)
    mono2 = read_image(make_dicom(v, bits_stored=12, window=window)).pixels
    mono1 = read_image(make_dicom(v, bits_stored=12, window=window, photometric="MONOCHROME1")).pixels
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def png16(array: NDArray[np.generic]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_monochrome2_monochrome1_and_png_of_one_array_normalise_identically() -> None:
    v = ramp(96, 80, top=65535)
    mono2 = read_image(make_dicom(v, bits_stored=16)).pixels
    mono1 = read_image(make_dicom(65535 - v, bits_stored=16, photometric="MONOCHROME1")).pixels
    png = read_image(png16(v)).pixels
    np.testing.assert_allclose(minmax(mono1), minmax(mono2), atol=1e-6)
    np.testing.assert_allclose(minmax(png), minmax(mono2), atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint16, st.tuples(st.integers(2, 12), st.integers(2, 12))))
def test_invariance_holds_for_arbitrary_arrays(v: NDArray[np.uint16]) -> None:
    top = int(v.max())
    mono2 = read_image(make_dicom(v, bits_stored=16)).pixels
    mono1 = read_image(make_dicom(top - v, bits_stored=16, photometric="MONOCHROME1")).pixels
    png = read_image(png16(v)).pixels
    np.testing.assert_allclose(minmax(mono1), minmax(mono2), atol=1e-6)
    np.testing.assert_allclose(minmax(png), minmax(mono2), atol=1e-6)


@pytest.mark.parametrize("bits", [8, 12, 15, 16])
def test_bit_depths_give_the_same_picture(bits: int) -> None:
    v = ramp(top=255)
    stored = v * (2 ** (bits - 8))
    image = read_image(make_dicom(stored, bits_stored=bits))
    assert image.info.bits_stored == bits
    np.testing.assert_allclose(minmax(image.pixels), minmax(v), atol=1e-6)


def test_invalid_window_falls_back_to_full_range() -> None:
    v = ramp(top=4095)
    image = read_image(make_dicom(v, bits_stored=12, window=(2000, 0)))
    assert "invalid_voi_window_full_range" in image.warnings
    np.testing.assert_allclose(image.pixels, minmax(v), atol=1e-6)


def test_window_outside_the_data_falls_back_to_full_range() -> None:
    v = ramp(top=4095)
    image = read_image(make_dicom(v, bits_stored=12, window=(40000, 100)))
    assert "voi_window_outside_data_full_range" in image.warnings
    np.testing.assert_allclose(image.pixels, minmax(v), atol=1e-6)


def test_rgb_secondary_capture_becomes_luma() -> None:
    gray = ramp(top=255)
    rgb = np.stack([gray, gray // 2, 255 - gray], axis=-1)
    image = read_image(make_dicom(rgb, photometric="RGB", bits_stored=8, modality="OT", rescale=None))
    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(image.pixels, expected, atol=1e-3)


def test_multi_frame_uses_the_first_frame() -> None:
    first = ramp(top=4095)
    frames = np.stack([first, 4095 - first, first // 2])
    image = read_image(make_dicom(frames, bits_stored=12))
    assert "multi_frame_first_used" in image.warnings
    np.testing.assert_allclose(image.pixels, minmax(first), atol=1e-6)


# --- transfer syntaxes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("syntax", "bits"),
    [
        (ImplicitVRLittleEndian, 12),
        (RLELossless, 12),
        (RLELossless, 8),
        (JPEG2000Lossless, 12),
        (JPEG2000Lossless, 15),
        (JPEGLSLossless, 12),
        (JPEGLSLossless, 16),
    ],
)
def test_lossless_encodings_decode_exactly(syntax: str, bits: int) -> None:
    v = ramp(top=2**bits - 1)
    native = read_image(make_dicom(v, bits_stored=bits, window=(2**bits / 3, 2**bits / 2)))
    encoded = read_image(
        make_dicom(v, bits_stored=bits, window=(2**bits / 3, 2**bits / 2), transfer_syntax=syntax)
    )
    np.testing.assert_array_equal(encoded.pixels, native.pixels)
    assert encoded.info.transfer_syntax == syntax
    assert "lossy_compressed" not in encoded.warnings


@pytest.mark.parametrize(
    ("syntax", "options"),
    [(JPEG2000, {"j2k_cr": [20]}), (JPEGLSNearLossless, {"jls_error": 3})],
)
def test_lossy_encodings_decode_close_and_are_flagged(syntax: str, options: dict) -> None:
    v = ramp(top=4095)
    data = make_dicom(
        v,
        bits_stored=12,
        transfer_syntax=syntax,
        encoding_kwargs=options,
        extra={"LossyImageCompression": "01"},
    )
    image = read_image(data)
    decoded_by_pydicom = dcmread(io.BytesIO(data)).pixel_array
    np.testing.assert_allclose(image.pixels, minmax(decoded_by_pydicom), atol=1e-6)
    assert corr(image.pixels, v) > 0.99
    assert "lossy_compressed" in image.warnings


@pytest.mark.parametrize(
    "syntax", [None, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGLSLossless]
)
@pytest.mark.parametrize("keep", [0.999, 0.5, 0.2])
def test_truncated_files_are_undecodable_and_name_the_transfer_syntax(
    syntax: str | None, keep: float
) -> None:
    data = make_dicom(
        np.random.default_rng(1).integers(0, 4096, (64, 64)),
        bits_stored=12,
        **({"transfer_syntax": syntax} if syntax else {}),
    )
    error = rejected(data[: int(len(data) * keep) - 16])
    assert error.reason == "undecodable"
    ts = dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID
    assert ts.name in error.detail and str(ts) in error.detail


def test_file_without_file_meta_is_read_as_implicit_little_endian() -> None:
    v = ramp(top=4095)
    data = make_dicom(v, bits_stored=12, no_file_meta=True)
    assert data[128:132] != b"DICM"
    assert detect_format(data) == "dicom"
    image = read_image(data)
    assert image.info.transfer_syntax == ImplicitVRLittleEndian
    assert "missing_file_meta" in image.warnings
    np.testing.assert_allclose(image.pixels, minmax(v), atol=1e-6)


@pytest.mark.parametrize("syntax", [None, RLELossless])
def test_file_meta_without_preamble_is_detected_and_read(syntax: str | None) -> None:
    v = ramp(top=4095)
    data = make_dicom(v, bits_stored=12, **({"transfer_syntax": syntax} if syntax else {}))
    headless = data[132:]
    assert headless[:2] == b"\x02\x00" and detect_format(headless) == "dicom"
    image = read_image(headless)
    assert image.info.transfer_syntax == dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID
    assert "missing_file_meta" not in image.warnings
    np.testing.assert_allclose(image.pixels, minmax(v), atol=1e-6)


@pytest.mark.parametrize(
    "data",
    [
        b"\x08\x00" + bytes(range(200)),
        b"\x08\x00\x05\x00" + b"\xff\xff\xff\x7f" + b"x" * 64,
        b"hello, this is not an image" * 10,
        bytes(np.random.default_rng(2).integers(0, 256, 1000, dtype=np.uint8)),
    ],
)
def test_garbage_is_unsupported_format(data: bytes) -> None:
    error = rejected(data)
    assert (error.reason, image_status(error)) == ("unsupported_format", 415)


# --- gates ----------------------------------------------------------------------------------------


def small(**kwargs: object) -> bytes:
    return make_dicom(ramp(16, 16, top=255), bits_stored=8, **kwargs)  # type: ignore[arg-type]


def test_sr_without_pixels_is_no_pixel_data() -> None:
    error = rejected(make_dicom(None, modality="SR", with_pixels=False))
    assert (error.reason, image_status(error)) == ("no_pixel_data", 422)
    assert "Enhanced SR Storage" in error.detail


@pytest.mark.parametrize("modality", ["DX", "CR", "OT"])
@pytest.mark.parametrize("image_pixel_module", [False, True])
def test_image_class_without_pixel_data_element_is_no_pixel_data(
    modality: str, image_pixel_module: bool
) -> None:
    pixel_module = {"Rows": 64, "Columns": 64, "BitsAllocated": 16, "SamplesPerPixel": 1}
    extra = pixel_module if image_pixel_module else {}
    data = make_dicom(None, modality=modality, with_pixels=False, extra=extra)
    assert "Image Storage" in dcmread(io.BytesIO(data)).file_meta.MediaStorageSOPClassUID.name
    error = rejected(data)
    assert (error.reason, image_status(error)) == ("no_pixel_data", 422)
    assert "Image Storage" in error.detail and "truncated" not in error.detail


@pytest.mark.parametrize("cut", [1, 3, 7, 12])
def test_header_only_image_cut_short_is_still_undecodable(cut: int) -> None:
    data = make_dicom(None, modality="DX", with_pixels=False)
    assert rejected(data[:-cut]).reason == "undecodable"


@pytest.mark.parametrize("modality", ["CT", "MR", "US", "MG"])
def test_non_radiograph_modalities_are_refused(modality: str) -> None:
    assert refused(small(modality=modality)) == ["modality"]


@pytest.mark.parametrize("modality", ["CR", "DX", "DR", "RG", "OT", "SC", "dx", None])
def test_radiograph_modalities_and_missing_modality_are_accepted(modality: str | None) -> None:
    image = read_image(small(modality=modality))
    assert ("missing_modality" in image.warnings) is (modality is None)


@pytest.mark.parametrize(
    "view", ["LL", "RL", "LATERAL", "LLD", "RLD", "LLO", "RLO", "lat", "LEFT LATERAL", "RL "]
)
def test_lateral_views_are_refused(view: str) -> None:
    assert refused(small(view_position=view)) == ["view"]


@pytest.mark.parametrize(
    ("view", "finding"),
    [
        ("PA", None),
        ("AP", None),
        ("AP SUPINE", None),
        ("pa", None),
        (None, "missing_view_position"),
        ("", "missing_view_position"),
        ("L", "unrecognised_view_position"),
        ("OBLIQUE", "unrecognised_view_position"),
    ],
)
def test_frontal_and_unknown_views_are_accepted(view: str | None, finding: str | None) -> None:
    image = read_image(small(view_position=view))
    view_findings = {w for w in image.warnings if "view_position" in w}
    assert view_findings == ({finding} if finding else set())


def test_lateral_named_only_in_view_code_sequence_or_body_part_is_refused() -> None:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "399198007", "SCT", "lateral"
    assert refused(small(view_position=None, extra={"ViewCodeSequence": [code]})) == ["view"]
    assert refused(small(view_position="", body_part="CHEST_LAT")) == ["view"]


@pytest.mark.parametrize("part", ["KNEE", "HIP", "EXTREMITY", "ABDOMEN", "SKULL", "CHESTABDOMEN"])
def test_other_body_parts_are_refused(part: str) -> None:
    assert refused(small(body_part=part)) == ["body_part"]


@pytest.mark.parametrize(
    "part", ["CHEST", "chest", "THORAX", "Thorax", "LUNG", "CHEST PA", "CHEST_LAT", None, ""]
)
def test_chest_and_missing_body_parts_are_accepted(part: str | None) -> None:
    image = read_image(small(body_part=part))
    assert ("missing_body_part" in image.warnings) is (not part)


def test_gates_run_before_decoding() -> None:
    """A refused object is refused for what it is, even when its pixels are broken."""
    data = small(body_part="KNEE")
    assert refused(data[:-20]) == ["body_part"]
    assert rejected(data[:-20], header_rules=()).reason == "undecodable"


def test_size_limits() -> None:
    data = make_dicom(ramp(64, 48, top=255), bits_stored=8)
    assert rejected(data, max_pixels=64 * 48 - 1).reason == "image_too_large"
    assert read_image(data, max_pixels=64 * 48).pixels.shape == (64, 48)
    error = rejected(small(extra={"Rows": 0}))
    assert (error.reason, image_status(error)) == ("empty_image", 422)
    assert rejected(b"").reason == "empty_image"


def test_shape_findings() -> None:
    assert {"small_image"} <= set(read_image(small()).warnings)
    wide = read_image(make_dicom(ramp(300, 460, top=255), bits_stored=8))
    assert "unusual_aspect_ratio" in wide.warnings and "small_image" not in wide.warnings
    square = read_image(make_dicom(ramp(300, 300, top=255), bits_stored=8))
    assert not {"small_image", "unusual_aspect_ratio"} & set(square.warnings)


# --- privacy --------------------------------------------------------------------------------------

# Invalid on purpose (a DA with dashes, an over-long PN): converting them would make pydicom warn
# and log the value, so these also prove the identifiers are never even converted.
NAME = "Zzsentinelname^Qqsentinelgiven"
PATIENT_ID = "PID-SENTINEL-778899"
BIRTH_DATE = "1901-12-31"
SENTINELS = ("Zzsentinelname", "Qqsentinelgiven", "SENTINEL-778899", "1901-12-31", "19011231")


def leaks(text: str) -> list[str]:
    return [s for s in SENTINELS if s.lower() in text.lower()]


def with_sentinels(**kwargs: object) -> bytes:
    options: dict[str, object] = {
        "patient_name": NAME,
        "patient_id": PATIENT_ID,
        "birth_date": BIRTH_DATE,
        "bits_stored": 12,
        **kwargs,
    }
    pixels = options.pop("pixels", ramp(64, 64, top=4095))
    return make_dicom(pixels, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "cut"),
    [
        ({}, 0),
        ({"view_position": "LL"}, 0),
        ({"body_part": "KNEE"}, 0),
        ({"modality": "CT"}, 0),
        ({"modality": "SR", "with_pixels": False, "pixels": None}, 0),
        ({}, 100),
        ({"transfer_syntax": RLELossless}, 100),
        ({"no_file_meta": True}, 0),
        ({"extra": {"OtherPatientIDs": ["SENTINEL-778899"]}}, 0),
    ],
)
def test_patient_identifiers_never_leak(
    kwargs: dict, cut: int, caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    data = with_sentinels(**kwargs)
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    recwarn.clear()  # writing the invalid sentinels made pydicom warn; reading must not
    texts: list[str] = []
    try:
        image = read_image(data[: len(data) - cut])
        texts += [json.dumps(image.info.to_dict()), repr(image.info), " ".join(image.warnings)]
    except ImageRejected as error:
        texts += [str(error), error.detail, repr(error), json.dumps(error.to_dict())]
    texts += [record.getMessage() for record in caplog.records]
    texts += [str(warning.message) for warning in recwarn]
    assert not leaks("\n".join(texts))


def test_info_fields_are_the_public_schema_without_identifiers() -> None:
    assert list(ImageInfo.__dataclass_fields__) == [
        "format",
        "rows",
        "columns",
        "photometric_interpretation",
        "bits_stored",
        "view_position",
        "transfer_syntax",
        "transfer_syntax_name",
        "modality",
        "body_part",
        "study_instance_uid",
        "series_instance_uid",
        "sop_instance_uid",
        "sop_class_uid",
    ]


def test_scrubber_redacts_identifier_values_from_decoder_messages() -> None:
    ds = dcmread(io.BytesIO(with_sentinels(extra={"AccessionNumber": "ACC-SENTINEL"})))
    scrub = Scrubber.from_dataset(ds)
    message = "failed near Zzsentinelname^Qqsentinelgiven / pid-sentinel-778899 / ACC-SENTINEL"
    cleaned = scrub(message)
    assert not leaks(cleaned) and "ACC-SENTINEL" not in cleaned
    assert cleaned.count(REDACTED) == 3
    assert scrub("libjpeg error code -1038") == "libjpeg error code -1038"
