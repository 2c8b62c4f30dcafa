"""A tiny SQUID trained for one epoch on real X-rays, and its exported artifact (session-scoped)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests.training.tiny_model import SIZE, tiny_config  # noqa: E402
from training import checkpoint as ckpt  # noqa: E402
from training.data import load_images, scan_folder  # noqa: E402
from training.export import export  # noqa: E402
from training.trainer import TrainData, Trainer, TrainOptions  # noqa: E402


@pytest.fixture(scope="session")
def real_images(shared_data: Path) -> dict[str, np.ndarray]:
    records = scan_folder(shared_data / "zhanglab-224" / "train")
    normals = [r for r in records if r.label == 0]
    pneumonia = [r for r in records if r.label == 1]
    return {
        "train": load_images(normals[:16], SIZE, progress=False),
        "val": load_images(normals[-6:] + pneumonia[:6], SIZE, progress=False),
        "paths": [str(r.path) for r in normals[-6:] + pneumonia[:6]],
    }


@pytest.fixture(scope="session")
def tiny_checkpoint(real_images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "tiny.ckpt"
    data = TrainData(real_images["train"], real_images["val"], np.array([0] * 6 + [1] * 6), {"kind": "test"})
    Trainer(tiny_config(), data, out, TrainOptions(epochs=1, progress=False)).fit()
    return out


@pytest.fixture(scope="session")
def tiny_artifact(tiny_checkpoint, real_images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("artifact") / "tiny.onnx"
    export(ckpt.load(tiny_checkpoint), out, real_images["val"][:6], real_images["train"], version="test")
    return out
