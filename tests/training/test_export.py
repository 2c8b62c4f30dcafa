"""Export: self-checks, embedded metadata, and artifact scores equal to checkpoint scores."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from model.artifact import METADATA_KEY, SCHEMA_VERSION, ArtifactError  # noqa: E402
from model.imaging import read_image  # noqa: E402
from model.preprocess import PREPROCESSING_VERSION, preprocess  # noqa: E402
from model.runtime import SquidRuntime  # noqa: E402
from tests.dicom_factory import make_dicom  # noqa: E402
from training import checkpoint as ckpt  # noqa: E402
from training import export as exporter  # noqa: E402
from training.scoring import score_images  # noqa: E402

pytestmark = pytest.mark.slow  # trains and exports a tiny model


def test_artifact_matches_torch_on_real_images(tiny_checkpoint, tiny_artifact, real_images):
    state = ckpt.load(tiny_checkpoint)
    generator, discriminator = state.build()
    images = real_images["val"]
    raw_torch, recon_torch = score_images(generator, discriminator, images)
    out = SquidRuntime(tiny_artifact).run(images)
    np.testing.assert_allclose(out["raw_score"], raw_torch, atol=1e-4)
    np.testing.assert_allclose(out["reconstruction"][:, 0], recon_torch, atol=1e-5)
    # The graph applies the calibration in float32 (an untrained model's tiny sigma magnifies the
    # rounding of mu); the runtime recomputes it in float64 from the metadata, exactly.
    calibration = state.get_calibration()
    np.testing.assert_allclose(out["score"], calibration.apply(out["raw_score"]), atol=1e-2)
    results = SquidRuntime(tiny_artifact).score(images)
    np.testing.assert_allclose([r.score for r in results], calibration.apply(out["raw_score"]), atol=1e-12)
    assert out["anomaly_map"].shape == (len(images), 1, 64, 64)


def test_map_total_is_the_raw_score_deviation_from_the_normals_mean_in_torch_and_onnxruntime(
    tiny_checkpoint, tiny_artifact, real_images
):
    """sum(map) = orientation * (raw - mean raw of the training normals), to float tolerance."""
    state = ckpt.load(tiny_checkpoint)
    generator, discriminator = state.build()
    calibration = state.get_calibration()
    reference = exporter.reference_map(
        generator, discriminator, real_images["train"], calibration.orientation
    )
    normals_raw, _ = score_images(generator, discriminator, real_images["train"])
    assert reference.raw_mean == pytest.approx(float(np.mean(normals_raw)), abs=1e-4)
    # The calibration's mu is the same mean (over the same normals): sum(map) / sigma is the z-score.
    assert reference.raw_mean == pytest.approx(calibration.mu, abs=1e-4)
    images = real_images["val"]
    chain = exporter.build_chain(state, reference)
    with torch.no_grad():
        raw, _, _, torch_map = (t.double().numpy() for t in chain(torch.from_numpy(images)[:, None]))
    orientation = calibration.orientation
    np.testing.assert_allclose(
        torch_map.sum(axis=(1, 2, 3)), orientation * (raw - reference.raw_mean), atol=1e-5
    )
    runtime = SquidRuntime(tiny_artifact)
    out = runtime.run(images)
    meta = runtime.metadata.anomaly_map
    assert meta["method"] == "integrated_gradients"
    assert meta["reference_raw_mean"] == pytest.approx(reference.raw_mean, abs=1e-9)
    onnx_totals = out["anomaly_map"].astype(np.float64).sum(axis=(1, 2, 3))
    expected = orientation * (out["raw_score"].astype(np.float64) - meta["reference_raw_mean"])
    np.testing.assert_allclose(onnx_totals, expected, atol=1e-5)
    np.testing.assert_allclose(out["anomaly_map"], torch_map, atol=1e-5)
    # Not a constant spread of the total: the map has structure within each image.
    assert all(np.ptp(m) > 0 for m in out["anomaly_map"])
    # Relative to the normals: their own maps average to (almost) nothing at every pixel.
    normals_mean = runtime.run(real_images["train"])["anomaly_map"].astype(np.float64).mean(0)
    assert np.abs(normals_mean).max() < 0.05 * meta["display_max"]
    assert runtime.map_scale == meta["display_max"] > 0
    assert all(r.map_scale == runtime.map_scale for r in runtime.score(images))


def test_export_refuses_without_training_normals(tiny_checkpoint, real_images, tmp_path):
    target = tmp_path / "x.onnx"
    with pytest.raises(exporter.ExportError, match="training normals"):
        exporter.export(ckpt.load(tiny_checkpoint), target, real_images["val"][:4], real_images["train"][:0])
    assert not target.exists()


def test_metadata_carries_everything_needed_to_score(tiny_checkpoint, tiny_artifact):
    state = ckpt.load(tiny_checkpoint)
    model = onnx.load(str(tiny_artifact))
    entries = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(entries[METADATA_KEY])
    assert meta["schema_version"] == SCHEMA_VERSION
    assert meta["calibration"] == state.calibration
    assert meta["threshold"] == state.threshold["value"]
    assert meta["threshold_rule"] == "f1_optimal"
    assert meta["input_size"] == 64 and meta["preprocessing"]["version"] == PREPROCESSING_VERSION
    assert meta["training"]["seed"] == state.seed and meta["training"]["git_commit"]
    assert len(meta["weights_sha256"]) == 64
    assert not any(init.name.endswith(".data") for init in model.graph.initializer)
    assert not list(Path(tiny_artifact).parent.glob("*.data"))  # one self-contained file


def test_dynamic_batch_dimension(tiny_artifact, real_images):
    runtime = SquidRuntime(tiny_artifact)
    images = real_images["val"]
    single = np.concatenate([runtime.run(images[i : i + 1])["raw_score"] for i in range(5)])
    np.testing.assert_allclose(runtime.run(images[:5])["raw_score"], single, atol=1e-5)


def test_export_aborts_and_writes_nothing_when_parity_fails(
    tiny_checkpoint, real_images, tmp_path, monkeypatch
):
    monkeypatch.setattr(exporter, "RAW_TOLERANCE", -1.0)
    target = tmp_path / "never.onnx"
    with pytest.raises(exporter.ExportError, match="disagrees"):
        exporter.export(ckpt.load(tiny_checkpoint), target, real_images["val"][:4], real_images["train"])
    assert not target.exists() and not list(tmp_path.iterdir())


def test_export_refuses_uncalibrated_checkpoint(tiny_checkpoint, real_images, tmp_path):
    state = ckpt.load(tiny_checkpoint)
    state.calibration = None
    state.threshold = None
    with pytest.raises(exporter.ExportError, match="not calibrated"):
        exporter.export(state, tmp_path / "x.onnx", real_images["val"][:4], real_images["train"])


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_artifact_scores_equal_checkpoint_scores_for_png_and_dicom(
    tiny_checkpoint, tiny_artifact, real_images
):
    """The same pixels as PNG, 16-bit MONOCHROME2 DICOM and MONOCHROME1 DICOM: one score, both runtimes."""
    source = np.asarray(Image.open(real_images["paths"][0]).convert("L"))
    wide = source.astype(np.uint16) * 257
    files = {
        "png": _png_bytes(source),
        "dicom_mono2": make_dicom(wide, bits_stored=16),
        "dicom_mono1": make_dicom(65535 - wide, photometric="MONOCHROME1", bits_stored=16),
    }
    arrays = {name: preprocess(read_image(data).pixels, 64) for name, data in files.items()}
    generator, discriminator = ckpt.load(tiny_checkpoint).build()
    runtime = SquidRuntime(tiny_artifact)
    torch_raw = {k: score_images(generator, discriminator, v[None])[0][0] for k, v in arrays.items()}
    onnx_raw = {k: runtime.run(v[None])["raw_score"][0] for k, v in arrays.items()}
    for name in files:
        assert onnx_raw[name] == pytest.approx(torch_raw[name], abs=1e-4)
        assert onnx_raw[name] == pytest.approx(onnx_raw["png"], abs=1e-4)


def test_runtime_refuses_unknown_schema_and_non_squid_models(tiny_artifact, tmp_path):
    model = onnx.load(str(tiny_artifact))
    meta = json.loads(model.metadata_props[0].value)
    meta["schema_version"] = SCHEMA_VERSION + 1
    model.metadata_props[0].value = json.dumps(meta)
    future = tmp_path / "future.onnx"
    onnx.save(model, str(future))
    with pytest.raises(ArtifactError, match="schema"):
        SquidRuntime(future)
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(ArtifactError, match="not a SQUID artifact"):
        SquidRuntime(bare)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx file")
    with pytest.raises(ArtifactError):
        SquidRuntime(garbage)


def test_threshold_override_changes_labels_not_scores(tiny_artifact, real_images):
    default = SquidRuntime(tiny_artifact).score(real_images["val"])
    everything = SquidRuntime(tiny_artifact, threshold=0.0).score(real_images["val"])
    assert [r.score for r in default] == [r.score for r in everything]
    assert all(r.is_anomalous for r in everything)
    with pytest.raises(ValueError):
        SquidRuntime(tiny_artifact, threshold=1.5)


def test_runtime_never_imports_torch(tiny_artifact, shared_data):
    code = (
        "import sys, numpy as np\n"
        "from model.runtime import SquidRuntime\n"
        "from model.imaging import read_path\n"
        "from model.heatmap import overlay_png\n"
        f"rt = SquidRuntime({str(tiny_artifact)!r})\n"
        f"img = read_path({str(shared_data / 'dicom/fo-dicom/CR-MONO1-10-chest.dcm')!r})\n"
        "r = rt.score(rt.preprocessing(img.pixels)[None])[0]\n"
        "overlay_png(img.pixels, r.anomaly_map)\n"
        "assert 0.0 <= r.score <= 1.0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_score_on_input_judges_the_input_in_torch_and_in_the_artifact(tiny_checkpoint, real_images, tmp_path):
    state = ckpt.load(tiny_checkpoint)
    state.config = {**state.config, "score_on": "input"}
    generator, discriminator = state.build()
    images = real_images["val"][:6]
    raw, _ = score_images(generator, discriminator, images)
    with torch.inference_mode():
        direct = discriminator.eval()(torch.from_numpy(images)[:, None]).double().numpy()
    np.testing.assert_allclose(raw, direct, atol=1e-6)
    on_reconstruction, _ = score_images(*ckpt.load(tiny_checkpoint).build(), images)
    assert not np.allclose(raw, on_reconstruction, atol=1e-3)
    out = tmp_path / "input.onnx"
    exporter.export(state, out, images, real_images["train"], version="test")
    runtime = SquidRuntime(out)
    got = runtime.run(images)
    np.testing.assert_allclose(got["raw_score"], raw, atol=1e-4)
    # The map decomposes D on what D judged: here the input itself.
    with torch.inference_mode():
        normals = torch.from_numpy(real_images["train"])[:, None]
        mean_raw = float(discriminator(normals).double().mean())
    assert runtime.metadata.anomaly_map["reference_raw_mean"] == pytest.approx(mean_raw, abs=1e-4)
    totals = got["anomaly_map"].astype(np.float64).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(totals, -(got["raw_score"] - mean_raw), atol=1e-4)


def test_operating_points_travel_in_the_artifact_and_select_the_threshold(tiny_checkpoint, tiny_artifact):
    state = ckpt.load(tiny_checkpoint)
    spec90 = state.threshold["operating_points"]["spec90"]["value"]
    runtime = SquidRuntime(tiny_artifact, operating_point="spec90")
    assert runtime.metadata.operating_points == {"spec90": pytest.approx(spec90)}
    assert runtime.threshold == pytest.approx(spec90)
    assert SquidRuntime(tiny_artifact, operating_point="default").threshold == runtime.metadata.threshold
    with pytest.raises(ValueError, match="spec90"):
        SquidRuntime(tiny_artifact, operating_point="spec99")
    with pytest.raises(ValueError, match="not both"):
        SquidRuntime(tiny_artifact, threshold=0.5, operating_point="spec90")


def test_optional_outputs_are_computed_only_on_request_and_never_change_the_scores(
    tiny_artifact, real_images
):
    runtime = SquidRuntime(tiny_artifact)
    assert runtime.switches == {"reconstruction": "with_reconstruction", "anomaly_map": "with_anomaly_map"}
    images = real_images["val"]
    full = runtime.run(images)
    plain = runtime.run(images, [])
    assert set(plain) == {"raw_score", "score"}
    np.testing.assert_array_equal(plain["raw_score"], full["raw_score"])
    map_only = runtime.run(images, ["anomaly_map"])
    assert set(map_only) == {"raw_score", "score", "anomaly_map"}
    np.testing.assert_array_equal(map_only["anomaly_map"], full["anomaly_map"])
    without = runtime.score(images, with_map=False)
    with_map = runtime.score(images)
    assert [r.score for r in without] == [r.score for r in with_map]
    assert all(r.anomaly_map is None for r in without)
    with pytest.raises(ValueError, match="without its anomaly map"):
        without[0].map_or_raise()
    np.testing.assert_array_equal(with_map[0].map_or_raise(), full["anomaly_map"][0, 0])
    with pytest.raises(ValueError, match="unknown outputs"):
        runtime.run(images, ["heatmap"])


def test_an_artifact_exported_before_outputs_were_switchable_still_scores(
    tiny_checkpoint, tiny_artifact, real_images, tmp_path
):
    """Artifacts already deployed compute every output on every call; the runtime must keep
    serving them, maps included, whatever the caller asks for."""
    state = ckpt.load(tiny_checkpoint)
    generator, judge = state.build()
    reference = exporter.reference_map(
        generator, judge, real_images["train"], state.get_calibration().orientation
    )
    chain = exporter.build_chain(state, reference)
    model = exporter.to_onnx(chain, 64)
    exporter.attach_metadata(model, exporter.build_metadata(state, chain, "ungated", reference))
    old = tmp_path / "ungated.onnx"
    exporter.write_atomically(model, old)
    runtime = SquidRuntime(old)
    assert runtime.switches == {}
    images = real_images["val"]
    expected = SquidRuntime(tiny_artifact).score(images)
    for with_map in (True, False):
        got = runtime.score(images, with_map=with_map)
        np.testing.assert_allclose([r.score for r in got], [r.score for r in expected], atol=1e-6)
        assert all((r.anomaly_map is not None) == with_map for r in got)


def test_runtime_refuses_an_artifact_with_inputs_it_does_not_know(tiny_artifact, tmp_path):
    model = onnx.load(str(tiny_artifact))
    model.graph.input[1].name = "with_something_new"
    for node in model.graph.node:
        node.input[:] = ["with_something_new" if n == "with_reconstruction" else n for n in node.input]
    odd = tmp_path / "odd.onnx"
    onnx.save(model, str(odd))
    with pytest.raises(ArtifactError, match="with_something_new"):
        SquidRuntime(odd)
