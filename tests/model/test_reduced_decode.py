"""Decoding at the model's resolution (issue 26): exact where it can be, and scores that do not move.

The first half checks the pieces against their definition: box means against a plain loop, a
reduced DICOM read against the box mean of a full read (every LUT kind, both polarities, colour),
codec reductions used only where the LUTs allow. The second half is the promise users see: for
full-size films in every transfer syntax, the calibrated score of the reduced decode is within 0.01
of a full decode of the same file, and no label flips.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image
from pydicom import dcmread
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from model.dicom_results import ModelInfo, build_for_upload
from model.imaging import read_image
from model.imaging.reduce import box_factor, box_mean, map_then_reduce, power_of_two_steps
from model.preprocess import Preprocessing
from model.runtime import SquidRuntime
from model.steps import decode_side, prepare
from tests.dicom_factory import make_dicom

SIDE = 120  # min_side of the exactness tests: small images, real reductions
SCORE_TOLERANCE = 0.01
FULL_SIZES = ((2140, 1760), (2048, 2048), (1760, 2140), (2500, 2048))
DCMTK_JPEG = shutil.which("dcmcjpeg")


def film(rows: int = 400, columns: int = 370, top: int = 4095, seed: int = 0) -> NDArray[np.uint16]:
    """Smooth anatomy-like structure plus noise, asymmetric so flips would show."""
    y, x = np.mgrid[0:rows, 0:columns] / max(rows, columns)
    pattern = np.sin(9 * x) * np.cos(5 * y) + 2 * x * y + np.exp(-((x - 0.3) ** 2 + (y - 0.6) ** 2) * 20)
    noise = np.random.default_rng(seed).normal(0, 0.05, pattern.shape)
    unit = pattern + noise
    unit = (unit - unit.min()) / (unit.max() - unit.min())
    return np.rint(unit * top).astype(np.uint16)


def reduced_and_full(data: bytes, min_side: int = SIDE) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    return read_image(data, min_side=min_side).pixels, read_image(data).pixels


def box_loop(image: NDArray[np.float64], factor: int) -> NDArray[np.float64]:
    rows, columns = -(-image.shape[0] // factor), -(-image.shape[1] // factor)
    out = np.empty((rows, columns))
    for r in range(rows):
        for c in range(columns):
            out[r, c] = image[r * factor : (r + 1) * factor, c * factor : (c + 1) * factor].mean()
    return out


# --- the pieces ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(12, 12), (13, 17), (31, 9), (5, 5)])
@pytest.mark.parametrize("factor", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_box_mean_averages_every_box_and_the_partial_ones_at_the_edges(
    shape: tuple[int, int], factor: int, dtype: type
) -> None:
    values = np.random.default_rng(1).integers(-300 if dtype == np.int16 else 0, 255, shape).astype(dtype)
    expected = box_loop(values.astype(np.float64), factor)
    np.testing.assert_allclose(box_mean(values, factor), expected, rtol=1e-12)
    np.testing.assert_allclose(map_then_reduce(values, lambda rows: rows * 2.0 + 1, factor), 2 * expected + 1)


def test_box_mean_cannot_overflow_on_16_bit_data() -> None:
    values = np.full((64, 64), 65535, dtype=np.uint16)
    assert box_mean(values, 64)[0, 0] == 65535.0


def test_reduction_keeps_the_shorter_side_at_least_min_side() -> None:
    assert box_factor(2140, 1760, 512) == 3 and box_factor(300, 2000, 512) == 1
    assert box_factor(2140, 1760, None) == 1
    assert power_of_two_steps(2140, 1760, 512, 5) == 1  # 1070 x 880: level 2 would give 440
    assert power_of_two_steps(2048, 2048, 512, 5) == 2  # 512, not 256
    assert power_of_two_steps(2048, 2048, 512, 1) == 1  # no more than the codestream's levels
    assert power_of_two_steps(700, 700, 512, 5) == 0


@pytest.mark.parametrize(
    "options",
    [
        {},  # no window: full range, affine
        {"window": (2048, 4096)},  # covers the data: affine, reduced first
        {"window": (1200, 800)},  # clips both ends: LUT first
        {"window": (1200, 800), "voi_lut_function": "SIGMOID"},
        {"window": (1500, 2000), "voi_lut_function": "LINEAR_EXACT"},
        {"voi_lut_sequence": (0, 16, [int(65535 * (i / 4095) ** 0.5) for i in range(4096)])},
        {"rescale": (-2.0, 100.0), "window": (-3000, 4000)},
        {"photometric": "MONOCHROME1", "window": (2000, 1000)},
        {"presentation_lut_shape": "INVERSE"},
    ],
    ids=["full-range", "wide", "clip", "sigmoid", "linear-exact", "voi-lut", "rescale", "mono1", "inverse"],
)
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless, JPEGLSLossless])
def test_reduced_dicom_read_is_the_box_mean_of_the_full_read(options: dict[str, object], syntax: str) -> None:
    data = make_dicom(film(), bits_stored=12, transfer_syntax=syntax, **options)  # type: ignore[arg-type]
    reduced, full = reduced_and_full(data)
    assert reduced.shape == (134, 124)  # 400 x 370 by boxes of 3
    np.testing.assert_allclose(reduced, box_mean(full.astype(np.float64), 3), rtol=1e-5, atol=1e-6)


def test_colour_and_palette_images_reduce_exactly() -> None:
    rgb = np.stack([film(seed=1) >> 4, film(seed=2) >> 4, film(seed=3) >> 4], axis=-1).astype(np.uint8)
    data = make_dicom(rgb, photometric="RGB", bits_stored=8)
    reduced, full = reduced_and_full(data)
    np.testing.assert_allclose(reduced, box_mean(full.astype(np.float64), 3), rtol=1e-5)


def test_the_image_keeps_its_own_size_in_the_metadata() -> None:
    image = read_image(make_dicom(film(), bits_stored=12), min_side=SIDE)
    assert image.pixels.shape == (134, 124)
    assert (image.info.rows, image.info.columns) == (400, 370)
    assert "small_image" not in image.warnings


def test_jpeg_2000_is_reduced_by_the_codec_when_the_luts_allow() -> None:
    """Resolution level 1 of 400 x 370 is 200 x 185 (a box reduction would give 134 x 124)."""
    data = make_dicom(film(), bits_stored=12, transfer_syntax=JPEG2000Lossless)
    reduced, full = reduced_and_full(data, min_side=150)
    assert reduced.shape == (200, 185)
    difference = np.abs(reduced - box_mean(full.astype(np.float64), 2))
    assert difference.mean() < 0.01 * float(np.ptp(full))  # the wavelet's low-pass, not a box


def test_jpeg_2000_with_a_clipping_window_is_decoded_in_full_then_reduced_exactly() -> None:
    data = make_dicom(film(), bits_stored=12, transfer_syntax=JPEG2000Lossless, window=(1200, 800))
    reduced, full = reduced_and_full(data, min_side=150)
    assert reduced.shape == (200, 185)
    np.testing.assert_allclose(reduced, box_mean(full.astype(np.float64), 2), rtol=1e-5, atol=1e-6)


def test_png_is_box_reduced_and_jpeg_is_dct_scaled() -> None:
    gray = (film() >> 4).astype(np.uint8)
    png, jpeg = io.BytesIO(), io.BytesIO()
    Image.fromarray(gray).save(png, format="PNG")
    Image.fromarray(gray).save(jpeg, format="JPEG", quality=95)
    reduced, full = reduced_and_full(png.getvalue())
    np.testing.assert_allclose(reduced, box_mean(full.astype(np.float64), 3), rtol=1e-6)
    dct = read_image(jpeg.getvalue(), min_side=150)
    assert dct.pixels.shape == (200, 185) and (dct.info.rows, dct.info.columns) == (400, 370)
    assert np.abs(dct.pixels - box_mean(gray.astype(np.float64), 2)).mean() < 2.0


# --- scores do not move -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runtime() -> SquidRuntime:
    return SquidRuntime(intra_op_threads=1)


@cache
def films_near_the_threshold(data_dir: Path, count: int) -> list[Path]:
    """Test-dev films whose 224 px score is closest to the threshold: where a label could flip."""
    runtime = SquidRuntime(intra_op_threads=1)
    paths = sorted((data_dir / "zhanglab-224" / "test-dev").glob("*/*.jpeg"))
    scores = []
    for start in range(0, len(paths), 64):
        batch = [
            prepare(p.read_bytes(), runtime.preprocessing, 10**8).array for p in paths[start : start + 64]
        ]
        scores += [r.score for r in runtime.score(np.stack(batch), with_map=False)]
    order = np.argsort(np.abs(np.asarray(scores) - runtime.threshold))
    return [paths[i] for i in order[:count]]


def full_size_pixels(path: Path, size: tuple[int, int], seed: int) -> NDArray[np.uint16]:
    """A 224 px film enlarged to a radiograph's size, 12 bits, with detector-like noise."""
    rows, columns = size
    image = Image.open(path).convert("L").resize((columns, rows), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(seed).integers(0, 16, (rows, columns))
    return (np.asarray(image, dtype=np.uint16) * 16 + noise).astype(np.uint16)


def dcmtk_jpeg(native: bytes, option: str, folder: Path) -> bytes:
    source, target = folder / "native.dcm", folder / f"jpeg{option}.dcm"
    source.write_bytes(native)
    subprocess.run([str(DCMTK_JPEG), option, str(source), str(target)], check=True, capture_output=True)
    return target.read_bytes()


def full_size_files(path: Path, size: tuple[int, int], seed: int, folder: Path) -> dict[str, bytes]:
    pixels = full_size_pixels(path, size, seed)
    eight_bit = (pixels >> 4).astype(np.uint8)
    native = make_dicom(pixels, bits_stored=12)
    files = {
        "explicit-le": native,
        "explicit-le-clipping-window": make_dicom(pixels, bits_stored=12, window=(1800, 2400)),
        "rle": make_dicom(pixels, bits_stored=12, transfer_syntax=RLELossless),
        "jpeg-ls": make_dicom(pixels, bits_stored=12, transfer_syntax=JPEGLSLossless),
        "jpeg-ls-near": make_dicom(
            pixels, bits_stored=12, transfer_syntax=JPEGLSNearLossless, encoding_kwargs={"jls_error": 3}
        ),
        "jpeg2000": make_dicom(pixels, bits_stored=12, transfer_syntax=JPEG2000Lossless),
        "jpeg2000-lossy": make_dicom(
            pixels, bits_stored=12, transfer_syntax=JPEG2000, encoding_kwargs={"j2k_cr": [20]}
        ),
        "jpeg2000-clipping-window": make_dicom(
            pixels, bits_stored=12, transfer_syntax=JPEG2000Lossless, window=(1800, 2400)
        ),
    }
    if DCMTK_JPEG:
        files["jpeg-lossless"] = dcmtk_jpeg(native, "+e1", folder)
        files["jpeg-extended-12"] = dcmtk_jpeg(native, "+ee", folder)
        files["jpeg-baseline-8"] = dcmtk_jpeg(make_dicom(eight_bit, bits_stored=8), "+eb", folder)
    return files


def as_chest(path: Path) -> bytes:
    """A shared file relabelled as a chest so the gates let it through (the pixels are untouched)."""
    ds = dcmread(path, force=True)
    ds.BodyPartExamined = "CHEST"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format="TransferSyntaxUID" in getattr(ds, "file_meta", {}))
    return buffer.getvalue()


def score_moves(runtime: SquidRuntime, files: dict[str, bytes]) -> dict[str, tuple[float, float]]:
    prep: Preprocessing = runtime.preprocessing
    reduced = [prepare(data, prep, 10**8) for data in files.values()]
    full = [prepare(data, prep, 10**8, full_resolution=True) for data in files.values()]
    assert all(min(r.array.shape) == prep.size for r in reduced)
    results = runtime.score(np.stack([item.array for item in reduced + full]), with_map=False)
    half = len(files)
    return {name: (results[i].score, results[half + i].score) for i, name in enumerate(files)}


def assert_scores_hold(moves: dict[str, tuple[float, float]], threshold: float) -> None:
    moved = {name: round(abs(a - b), 4) for name, (a, b) in moves.items() if abs(a - b) > SCORE_TOLERANCE}
    flipped = [name for name, (a, b) in moves.items() if (a >= threshold) != (b >= threshold)]
    assert not moved, f"scores moved by more than {SCORE_TOLERANCE}: {moved}"
    assert not flipped, f"labels flipped: {flipped}"


@pytest.mark.slow
@pytest.mark.skipif(DCMTK_JPEG is None, reason="DCMTK's dcmcjpeg writes the JPEG films (scripts/test.sh)")
def test_full_size_films_in_every_syntax_score_as_a_full_decode_does(
    shared_data: Path, runtime: SquidRuntime, tmp_path: Path
) -> None:
    """The four test-dev films closest to the threshold (where a label flips first), enlarged to
    radiograph sizes and written in eleven syntaxes, DCMTK's JPEG encoder included."""
    checked = 0
    for index, path in enumerate(films_near_the_threshold(shared_data, 4)):
        files = full_size_files(path, FULL_SIZES[index % len(FULL_SIZES)], index, tmp_path)
        assert len(files) == 11
        assert_scores_hold(score_moves(runtime, files), runtime.threshold)
        checked += len(files)
    assert checked == 44


@pytest.mark.data
def test_shared_dicom_files_score_as_a_full_decode_does(shared_data: Path, runtime: SquidRuntime) -> None:
    """WG04 in every syntax (relabelled as chests), the real chest and dog films, the fixed JPLY."""
    paths = sorted((shared_data / "dicom").rglob("*.dcm"))
    files = {path.relative_to(shared_data).as_posix(): as_chest(path) for path in paths}
    assert len(files) == 21
    assert_scores_hold(score_moves(runtime, files), runtime.threshold)


def test_every_channel_decodes_at_four_times_the_model_input() -> None:
    assert decode_side(Preprocessing(128, "equalize")) == 512
    assert decode_side(Preprocessing(64)) == 512  # never under what the heatmap is drawn at
    assert decode_side(Preprocessing(256)) == 1024


def test_the_secondary_capture_is_drawn_from_the_pixels_decoded_for_the_model(runtime: SquidRuntime) -> None:
    """A 2048 px film is decoded at 512 px; its capture is that size plus the caption band, with no
    second, full-size decode."""
    data = make_dicom(film(2048, 2048), bits_stored=12, transfer_syntax=JPEG2000Lossless)
    item = prepare(data, runtime.preprocessing, 10**8)
    assert item.decoded.pixels.shape == (512, 512)
    result = runtime.score(item.array[None], with_map=True)[0]
    model = ModelInfo.from_metadata(runtime.metadata)
    capture = next(obj for obj in build_for_upload(data, item.decoded, result, model) if obj.kind == "sc")
    assert (capture.dataset.Columns, capture.dataset.Rows > 512) == (512, True)
