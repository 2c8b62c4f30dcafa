"""The domain gate's image check goes into artifacts: automatically at export, and into an artifact
already exported (``squid add-domain-gate``) with every score bit-identical before and after."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from model.artifact import DOMAIN_OUTPUT
from model.runtime import SquidRuntime
from training import checkpoint as ckpt
from training import domain
from training.domain_export import DomainGateError, add_to_artifact
from training.export import export

pytestmark = pytest.mark.slow  # trains and exports a tiny model


@pytest.fixture(scope="module")
def small_sets(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A training and a selection folder of real films (links), named like the data set they are from."""
    root = tmp_path_factory.mktemp("data")
    source = shared_data / "zhanglab-224"
    for name, split, count in (("zhanglab-mini-train", "train", 40), ("zhanglab-mini-dev", "test-dev", 15)):
        for label in ("NORMAL", "PNEUMONIA"):
            folder = root / name / label
            folder.mkdir(parents=True)
            for path in sorted((source / split / label).glob("*.jpeg"))[:count]:
                os.symlink(path, folder / path.name)
    return root / "zhanglab-mini-train", root / "zhanglab-mini-dev"


def outputs(artifact: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    return SquidRuntime(artifact).run(images, ["reconstruction", "anomaly_map"])


def test_export_fits_and_calibrates_the_gate_from_the_checkpoint_data(
    tiny_checkpoint: Path, real_images: dict[str, np.ndarray], small_sets: tuple[Path, Path], tmp_path: Path
) -> None:
    train, dev = small_sets
    state = dataclasses.replace(
        ckpt.load(tiny_checkpoint),
        data={"kind": "image_folder", "root": str(train), "selection": {"root": str(dev)}},
    )
    out = tmp_path / "gated.onnx"
    report = export(state, out, real_images["val"][:6], real_images["train"], version="test")
    meta = report.metadata
    assert meta.domain["threshold"] > 0 and meta.domain["fit_images"] == 80
    assert set(meta.domain["pass_rates"]) == {
        "training normal",
        "training anomalous",
        "selection normal",
        "selection anomalous",
    }
    assert min(meta.domain["pass_rates"].values()) >= 0.99
    assert meta.population["age_years"] == {"min": 1, "max": 5}  # known for ZhangLab folders
    runtime = SquidRuntime(out)
    assert runtime.has_domain_model and runtime.gate.threshold == meta.domain["threshold"]
    [result] = runtime.score(real_images["val"][:1], with_map=False)
    assert result.domain_distance is not None and result.domain_distance >= 0


def test_adding_the_gate_keeps_every_output_bit_identical(
    tiny_artifact: Path, real_images: dict[str, np.ndarray], small_sets: tuple[Path, Path], tmp_path: Path
) -> None:
    train, dev = small_sets
    before = SquidRuntime(tiny_artifact)
    assert not before.has_domain_model and before.gate.threshold is None
    gated = tmp_path / "gated.onnx"
    described = add_to_artifact(tiny_artifact, gated, train, dev)
    images = real_images["val"]
    old, new = outputs(tiny_artifact, images), outputs(gated, images)
    for name in ("raw_score", "score", "reconstruction", "anomaly_map"):
        assert np.array_equal(old[name], new[name]), name
    after = SquidRuntime(gated)
    assert after.gate.threshold == described["threshold"]
    assert after.metadata.weights_sha256 == before.metadata.weights_sha256
    assert [o.name for o in onnx.load(str(gated)).graph.output][-1] == DOMAIN_OUTPUT
    # Adding again replaces the domain model instead of stacking a second one.
    again = add_to_artifact(gated, gated, train, dev)
    assert sum(o.name == DOMAIN_OUTPUT for o in onnx.load(str(gated)).graph.output) == 1
    assert again["sha256"] == described["sha256"]


def test_a_changed_score_aborts_and_writes_nothing(
    tiny_artifact: Path, small_sets: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check compares outputs for real: a splice that touched the model is refused."""
    train, dev = small_sets
    real_attach = domain.attach

    def corrupting(artifact: onnx.ModelProto, model: domain.DomainModel) -> onnx.ModelProto:
        spliced = real_attach(artifact, model)
        for init in spliced.graph.initializer:  # nudge every convolution weight of the model itself
            values = onnx.numpy_helper.to_array(init)
            if values.dtype == np.float32 and values.ndim == 4 and not init.name.startswith("domain/"):
                init.CopyFrom(onnx.numpy_helper.from_array(values * np.float32(1.01), init.name))
        return spliced

    monkeypatch.setattr(domain, "attach", corrupting)
    target = tmp_path / "never.onnx"
    with pytest.raises(DomainGateError, match="changed when the domain model was added"):
        add_to_artifact(tiny_artifact, target, train, dev)
    assert not target.exists()


def test_the_cli_prints_what_it_recorded(
    tiny_artifact: Path, small_sets: tuple[Path, Path], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    train, dev = small_sets
    out = tmp_path / "cli.onnx"
    args = [str(tiny_artifact), "--data", str(train), "--select-data", str(dev), "--out", str(out)]
    result = CliRunner().invoke(app, ["add-domain-gate", *args, "--population-age", "18-90"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["output"] == DOMAIN_OUTPUT
    assert SquidRuntime(out).metadata.population["age_years"] == {"min": 18.0, "max": 90.0}
