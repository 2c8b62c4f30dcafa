"""PNG/JPEG reading: every Pillow mode to one gray plane, EXIF orientation, bombs, broken files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from model.imaging import ImageRejected, read_image, read_path
from model.imaging.detect import detect_format
from service.errors import image_status


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def gradient(rows: int = 300, columns: int = 280, top: int = 255) -> NDArray[np.int64]:
    """Asymmetric pattern: bright top-left block, ramp elsewhere (orientation shows)."""
    y, x = np.mgrid[0:rows, 0:columns]
    values = (x + 2 * y) * top // (columns + 2 * rows)
    values[: rows // 4, : columns // 4] = top
    return values


def luma(rgb: NDArray[np.generic]) -> NDArray[np.float64]:
    rgb = np.asarray(rgb, dtype=np.float64)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def rejected(data: bytes, **kwargs: object) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        read_image(data, **kwargs)  # type: ignore[arg-type]
    return info.value


def png_with_header(width: int, height: int, idat: bytes = b"\0" * 64) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(idat))
        + chunk(b"IEND", b"")
    )


def test_8_bit_gray_png_is_read_exactly() -> None:
    values = gradient().astype(np.uint8)
    image = read_image(encode(Image.fromarray(values)))
    np.testing.assert_array_equal(image.pixels, values.astype(np.float32))
    assert image.pixels.dtype == np.float32
    info = image.info
    assert (info.format, info.photometric_interpretation, info.bits_stored) == (
        "png",
        "MONOCHROME2",
        8,
    )
    assert (info.rows, info.columns) == values.shape
    assert info.transfer_syntax is None and info.modality is None
    assert image.warnings == []


def test_16_bit_png_keeps_its_depth() -> None:
    values = gradient(top=65535).astype(np.uint16)
    data = encode(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    image = read_image(data)
    np.testing.assert_array_equal(image.pixels, values.astype(np.float32))
    assert image.info.bits_stored == 16


def test_gray_stored_as_rgb_is_the_gray_and_not_flagged() -> None:
    values = gradient().astype(np.uint8)
    rgb = np.stack([values] * 3, axis=-1)
    image = read_image(encode(Image.fromarray(rgb)))
    np.testing.assert_allclose(image.pixels, values, atol=1e-3)
    assert image.info.photometric_interpretation == "RGB"
    assert "color_converted_to_gray" not in image.warnings


def test_colour_rgb_becomes_luma_and_is_flagged() -> None:
    values = gradient()
    rgb = np.stack([values, 255 - values, values // 3], axis=-1).astype(np.uint8)
    image = read_image(encode(Image.fromarray(rgb)))
    np.testing.assert_allclose(image.pixels, luma(rgb), atol=1e-3)
    assert "color_converted_to_gray" in image.warnings


def test_rgba_alpha_is_ignored() -> None:
    values = gradient().astype(np.uint8)
    alpha = np.where(gradient() > 100, 255, 0).astype(np.uint8)
    rgba = np.stack([values, values, values, alpha], axis=-1)
    image = read_image(encode(Image.fromarray(rgba)))
    np.testing.assert_allclose(image.pixels, values, atol=1e-3)
    assert "alpha_channel_ignored" in image.warnings


def test_la_uses_the_luminance_channel() -> None:
    values = gradient().astype(np.uint8)
    la = Image.merge("LA", [Image.fromarray(values), Image.fromarray(np.full_like(values, 128))])
    image = read_image(encode(la))
    np.testing.assert_array_equal(image.pixels, values.astype(np.float32))
    assert "alpha_channel_ignored" in image.warnings


def test_palette_png_maps_through_its_palette() -> None:
    indices = (gradient() // 16).astype(np.uint8)  # 16 palette entries, in scrambled order
    grays = (np.arange(16) * 37) % 256
    palette = np.zeros((256, 3), np.uint8)
    palette[:16] = np.stack([grays] * 3, axis=-1)
    indexed = Image.fromarray(indices, mode="P")
    indexed.putpalette(palette.ravel().tolist())
    data = encode(indexed)
    assert Image.open(io.BytesIO(data)).mode == "P"
    image = read_image(data)
    np.testing.assert_allclose(image.pixels, grays[indices], atol=1e-3)
    assert image.info.photometric_interpretation == "PALETTE COLOR"


def test_gray_jpeg_is_close_and_flagged_lossy() -> None:
    values = gradient().astype(np.uint8)
    image = read_image(encode(Image.fromarray(values), "JPEG", quality=95))
    assert image.info.format == "jpeg"
    assert np.abs(image.pixels - values).mean() < 2.0
    assert "lossy_compressed" in image.warnings


@pytest.mark.parametrize(
    ("orientation", "expected"),
    [
        (1, lambda a: a),
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),  # stored rotated: display is 90 degrees clockwise
        (8, lambda a: np.rot90(a, 1)),
        (2, lambda a: a[:, ::-1]),
    ],
)
def test_exif_orientation_is_applied(orientation: int, expected: object) -> None:
    values = gradient(240, 320).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(values), "JPEG", quality=95, exif=exif.tobytes())
    image = read_image(data)
    target = expected(values)  # type: ignore[operator]
    assert image.pixels.shape == target.shape
    assert (image.info.rows, image.info.columns) == target.shape
    assert np.abs(image.pixels - target).mean() < 2.0
    assert ("exif_orientation_applied" in image.warnings) is (orientation != 1)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_undecodable(fmt: str) -> None:
    noisy = np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)
    data = encode(Image.fromarray(noisy), fmt)
    error = rejected(data[: len(data) // 2])
    assert (error.reason, image_status(error)) == ("undecodable", 422)
    assert fmt in error.detail


@pytest.mark.parametrize(
    "data",
    [
        bytes(np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8)),
        b"%PDF-1.7 not an image" * 20,
        encode(Image.new("L", (32, 32)), "GIF"),
        encode(Image.new("L", (32, 32)), "BMP"),
        encode(Image.new("L", (32, 32)), "TIFF"),
        encode(Image.new("L", (32, 32)), "WEBP"),
    ],
    ids=["random", "pdf", "gif", "bmp", "tiff", "webp"],
)
def test_other_content_is_unsupported_format(data: bytes) -> None:
    assert detect_format(data) is None
    error = rejected(data)
    assert (error.reason, image_status(error)) == ("unsupported_format", 415)


def test_format_comes_from_content_not_from_the_file_name(tmp_path: Path) -> None:
    values = gradient().astype(np.uint8)
    misnamed = tmp_path / "scan.dcm"
    misnamed.write_bytes(encode(Image.fromarray(values)))
    assert read_path(misnamed).info.format == "png"
    text = tmp_path / "image.png"
    text.write_bytes(b"definitely not a picture" * 8)
    assert rejected(text.read_bytes()).reason == "unsupported_format"


def test_bomb_header_is_refused_before_decoding() -> None:
    error = rejected(png_with_header(50_000, 50_000))
    assert (error.reason, image_status(error)) == ("image_too_large", 422)


def test_max_pixels_is_honoured_below_pillows_own_limit() -> None:
    data = encode(Image.fromarray(gradient().astype(np.uint8)))
    assert rejected(data, max_pixels=300 * 280 - 1).reason == "image_too_large"
    assert read_image(data, max_pixels=300 * 280).pixels.shape == (300, 280)
    assert rejected(png_with_header(9000, 9000), max_pixels=1_000_000).reason == ("image_too_large")


def test_header_within_limits_but_missing_data_is_undecodable() -> None:
    assert rejected(png_with_header(2000, 2000)).reason == "undecodable"


def test_empty_input() -> None:
    assert rejected(b"").reason == "empty_image"


@pytest.mark.parametrize(
    ("shape", "findings"),
    [
        ((512, 512), set()),
        ((100, 120), {"small_image"}),
        ((300, 600), {"unusual_aspect_ratio"}),
        ((600, 300), {"unusual_aspect_ratio"}),
        ((100, 400), {"small_image", "unusual_aspect_ratio"}),
    ],
)
def test_shape_findings(shape: tuple[int, int], findings: set[str]) -> None:
    image = read_image(encode(Image.new("L", (shape[1], shape[0]), 7)))
    assert set(image.warnings) == findings


@pytest.mark.data
def test_zhanglab_jpeg_reads_as_gray(shared_data: Path) -> None:
    folder = shared_data / "zhanglab-224" / "train" / "NORMAL"
    samples = sorted(folder.glob("*.jp*g"))[:3] if folder.is_dir() else []
    if not samples:
        pytest.skip("no ZhangLab samples")
    for path in samples:
        image = read_path(path)
        assert image.pixels.shape == (224, 224)
        assert image.info.format == "jpeg"
        assert "color_converted_to_gray" not in image.warnings
        assert image.pixels.max() > image.pixels.min()


# --- animated PNG (issue 25, defect 12) ---------------------------------------------------------


def test_animated_png_is_read_at_its_first_frame_with_the_multi_frame_finding() -> None:
    first = gradient().astype(np.uint8)
    frames = [Image.fromarray(first), Image.fromarray(255 - first), Image.fromarray(first // 2)]
    data = encode(frames[0], save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3  # a real APNG (acTL/fcTL/fdAT chunks)
    image = read_image(data)
    np.testing.assert_array_equal(image.pixels, first.astype(np.float32))
    assert "multi_frame_first_used" in image.warnings


def test_a_still_png_has_no_multi_frame_finding() -> None:
    assert (
        "multi_frame_first_used"
        not in read_image(encode(Image.fromarray(gradient().astype(np.uint8)))).warnings
    )
