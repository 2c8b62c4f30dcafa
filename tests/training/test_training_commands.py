"""The training commands as a user runs them: train -> evaluate -> export -> score, and baseline.

Each step is the real ``squid`` command in a subprocess, on real X-rays listed in CSV files, with a
config small enough for CI (the tiny test model's fields passed with ``--set``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from tests.training.tiny_model import tiny_config
from training.data import scan_folder

pytestmark = [pytest.mark.data, pytest.mark.slow]

SQUID = [sys.executable, "-m", "cli.main"]
TINY_FIELDS = (
    "image_size",
    "encoder_channels",
    "bottleneck_channels",
    "attention_heads",
    "queue_items",
    "decoder_memory_slots",
    "discriminator_channels",
    "batch_size",
)


def squid(*args: str | Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*SQUID, *map(str, args)], capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def tiny_overrides() -> list[str]:
    config = tiny_config().to_dict()
    return [arg for name in TINY_FIELDS for arg in ("--set", f"{name}={json.dumps(config[name])}")]


def write_csv(path: Path, records: list, label_of=lambda r: r.label) -> Path:
    path.write_text("path,label\n" + "".join(f"{r.path},{label_of(r)}\n" for r in records))
    return path


@pytest.fixture(scope="module")
def trained(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("commands")
    train = scan_folder(shared_data / "zhanglab-224" / "train")
    dev = scan_folder(shared_data / "zhanglab-224" / "test-dev")
    normals = [r for r in train if r.label == 0][:24]
    pneumonia = [r for r in train if r.label == 1][:6]
    paths = {
        "train_csv": write_csv(root / "train.csv", normals + pneumonia),
        "select_csv": write_csv(
            root / "select.csv", [r for r in dev if r.label == 0][:20] + [r for r in dev if r.label == 1][:6]
        ),
        "ckpt": root / "tiny.ckpt",
        "report": root / "report",
        "onnx": root / "tiny.onnx",
        "ae": root / "ae.pt",
    }
    out = squid(
        "train", "--data", paths["train_csv"], "--select-data", paths["select_csv"], "--preset", "lite",
        "--epochs", "2", "--val-normal", "4", "--val-anomalous", "4", "--out", paths["ckpt"],
        "--threads", "1", *tiny_overrides(),
    )  # fmt: skip
    assert "best epoch 2" in out.stdout
    return paths


def test_train_writes_a_checkpoint_selected_on_the_selection_set(trained):
    from training import checkpoint as ckpt

    best = ckpt.load(trained["ckpt"])
    assert best.data["selection"]["n"] == 26 and best.data["n_validation"] >= 8
    assert best.epoch == 2 and len(best.history) == 2
    assert best.validation["selection"]["auc"] == pytest.approx(best.history[1][f"sel_auc_{best.score_norm}"])
    assert set(best.threshold["operating_points"]) == {"default", "spec90"}


def test_baseline_then_evaluate_compares_every_method_on_every_split(trained):
    out = squid(
        "baseline", "--data", trained["train_csv"], "--out", trained["ae"], "--epochs", "1",
        "--select-data", trained["select_csv"], "--threads", "1", "--val-normal", "4", "--val-anomalous", "4",
    )  # fmt: skip
    assert "AE baseline: best AUC" in out.stdout
    summary = json.loads(trained["ae"].with_suffix(".json").read_text())
    assert summary["selected_on"] == "selection" and summary["best_epoch"] == 1

    report = squid(
        "evaluate", trained["ckpt"], "--out", trained["report"], "--data", trained["select_csv"],
        "--autoencoder", trained["ae"],
    )  # fmt: skip
    comparison = json.loads((trained["report"] / "comparison.json").read_text())
    methods = comparison["auc"]
    assert len(methods) == 6 and any(m.startswith("SQUID lite") for m in methods)
    assert {
        "central-crop intensity (min-max)",
        "central-crop intensity (equalised)",
        "per-pixel atlas (64 px equalised)",
        "auto-encoder (recon. error)",
    } <= set(methods)
    for row in methods.values():
        assert set(row) == {"validation", "select"}
        for cell in row.values():
            assert 0.0 <= cell["low"] <= cell["auc"] <= cell["high"] <= 1.0
    assert comparison["sizes"]["select"] == "20 N / 6 A"
    squid_auc = next(v for k, v in methods.items() if k.startswith("SQUID"))["select"]["auc"]
    metrics = json.loads((trained["report"] / "select" / "metrics.json").read_text())
    assert metrics["auc"] == pytest.approx(squid_auc)
    for picture in ("roc_comparison.png", "training_curves.png", "select/roc.png", "validation/roc.png"):
        assert (trained["report"] / picture).stat().st_size > 1000, picture
    assert "| central-crop intensity (min-max) |" in report.stdout

    # The structural benchmark: the 20 selection normals altered in every kind; the validation split
    # has too few normals for it.
    structural = json.loads((trained["report"] / "structural.json").read_text())
    assert set(structural) == set(methods) - {"auto-encoder (recon. error)"}
    for rows in structural.values():
        assert set(rows) == {"select"}
        row = rows["select"]
        expected = {"labelled anomalous", "misplaced", "foreign_body", "lucent", "opaque", "mirror", "coin"}
        assert expected <= set(row)
        assert 0.0 <= row["coin"]["low"] <= row["coin"]["auc"] <= row["coin"]["high"] <= 1.0
    crop = structural["central-crop intensity (min-max)"]["select"]
    assert crop["mirror"]["auc"] == pytest.approx(0.5, abs=0.05), "a centred crop cannot see a mirrored film"
    assert "structural anomalies" in report.stdout


def test_export_then_score_agrees_with_the_checkpoint(trained, shared_data):
    import numpy as np
    import torch

    from model.imaging import read_path
    from model.preprocess import preprocess
    from training import checkpoint as ckpt
    from training.scoring import score_images

    squid("export", trained["ckpt"], "--out", trained["onnx"], "--check-images", "4")
    files = sorted((shared_data / "zhanglab-224" / "test-dev" / "PNEUMONIA").iterdir())[:3]
    out = squid("score", *files, "--model", trained["onnx"], "--json")
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    best = ckpt.load(trained["ckpt"])
    generator, discriminator = best.build()
    images = np.stack([preprocess(read_path(f).pixels, 64) for f in files])
    with torch.inference_mode():
        raw, _ = score_images(generator, discriminator, images)
    expected = best.get_calibration().apply(raw)
    # The export's own parity limit is 1e-4 on the raw logit; a tiny model's small sigma magnifies it.
    assert [r["raw_score"] for r in rows] == pytest.approx(list(raw), abs=1e-3)
    assert [r["score"] for r in rows] == pytest.approx(list(expected), abs=1e-3)
    assert [r["threshold"] for r in rows] == pytest.approx([best.threshold["value"]] * len(rows), abs=1e-6)


def test_ensemble_of_two_seeds_scores_their_mean_logit_after_export(trained, shared_data, tmp_path):
    import numpy as np
    import torch

    from model.imaging import read_path
    from model.preprocess import preprocess
    from model.runtime import SquidRuntime
    from training import checkpoint as ckpt
    from training.scoring import score_images

    seeds = [tmp_path / f"seed{seed}.ckpt" for seed in (0, 1)]
    combined, artifact = tmp_path / "ens.ckpt", tmp_path / "ens.onnx"
    for seed, out in enumerate(seeds):
        squid(
            "train", "--data", trained["train_csv"], "--select-data", trained["select_csv"],
            "--preset", "lite", "--epochs", "1", "--val-normal", "4", "--val-anomalous", "4",
            "--out", out, "--seed", seed, "--threads", "1", "--set", "score_on=\"input\"", *tiny_overrides(),
        )  # fmt: skip
    members = [ckpt.load(path) for path in seeds]
    assert members[0].data["validation_digest"] == members[1].data["validation_digest"]  # the same split
    assert "ensemble of 2" in squid("ensemble", *seeds, "--out", combined).stdout
    ensemble = ckpt.load(combined)
    assert [m["seed"] for m in ensemble.members] == [1]
    assert set(ensemble.threshold["operating_points"]) == {"default", "spec90"}

    files = sorted((shared_data / "zhanglab-224" / "test-dev" / "PNEUMONIA").iterdir())[:3]
    images = np.stack([preprocess(read_path(f).pixels, 64) for f in files])
    with torch.inference_mode():
        each = [score_images(*m.build(), images)[0] for m in members]
    squid("export", combined, "--out", artifact, "--check-images", "4")
    out = squid("score", *files, "--model", artifact, "--json")
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["raw_score"] for r in rows] == pytest.approx(list(np.mean(each, axis=0)), abs=1e-3)
    meta = SquidRuntime(artifact).metadata
    assert meta.model_version.split(".")[-2].endswith("x2")
    assert [m["seed"] for m in meta.training["ensemble"]] == [0, 1]


def test_ensemble_refuses_other_recipes_and_judges_of_reconstructions(trained, tmp_path):
    from training import checkpoint as ckpt

    first = ckpt.load(trained["ckpt"])
    assert first.config["score_on"] == "reconstruction"
    other = ckpt.load(trained["ckpt"])
    other.config = {**other.config, "lr": other.config["lr"] * 2}
    ckpt.save(other, tmp_path / "other.ckpt")
    for config, message in (
        (first.config, "judge the input"),
        ({**first.config, "score_on": "input"}, "different configs"),
    ):
        first.config = config
        ckpt.save(first, tmp_path / "first.ckpt")
        result = subprocess.run(
            [*SQUID, "ensemble", tmp_path / "first.ckpt", tmp_path / "other.ckpt",
             "--out", tmp_path / "x.ckpt"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert result.returncode != 0 and message in result.stderr
        assert not (tmp_path / "x.ckpt").exists()
