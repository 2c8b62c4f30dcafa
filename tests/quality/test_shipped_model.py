"""The shipped artifact is a working detector, not just a loadable file.

Every other score check compares the artifact with itself; these compare it with the world: its
recorded selection AUC on test-dev (reproduced through the real ``squid score`` command), the
central-crop intensity baseline it has to beat, and the sample scores the README promises.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from model.imaging import read_path
from model.preprocess import preprocess
from model.runtime import SquidRuntime
from tests.conftest import REPO_ROOT
from training.baselines import central_crop_intensity

pytestmark = pytest.mark.data

SQUID = [sys.executable, "-m", "cli.main"]
MARGIN_OVER_BASELINE = 0.05
AUC_TOLERANCE = 0.01


def squid_score(*args: str | Path) -> str:
    done = subprocess.run(
        [*SQUID, "score", *map(str, args)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def test_dev(shared_data: Path) -> tuple[list[Path], np.ndarray]:
    root = shared_data / "zhanglab-224" / "test-dev"
    files = [*sorted((root / "NORMAL").iterdir()), *sorted((root / "PNEUMONIA").iterdir())]
    labels = np.array([0 if f.parent.name == "NORMAL" else 1 for f in files])
    return files, labels


@pytest.fixture(scope="module")
def shipped_scores(test_dev: tuple[list[Path], np.ndarray]) -> np.ndarray:
    files, _ = test_dev
    rows = [json.loads(line) for line in squid_score(*files, "--json").splitlines()]
    assert [Path(r["file"]).name for r in rows] == [f.name for f in files]
    return np.array([r["score"] for r in rows])


def test_shipped_model_reaches_its_recorded_test_dev_auc(test_dev, shipped_scores):
    recorded = SquidRuntime().metadata.validation["selection"]["auc"]
    assert roc_auc_score(test_dev[1], shipped_scores) == pytest.approx(recorded, abs=AUC_TOLERANCE)


def test_shipped_model_beats_the_central_crop_baseline(test_dev, shipped_scores):
    files, labels = test_dev
    crop = central_crop_intensity(np.stack([preprocess(read_path(f).pixels, 128) for f in files]))
    assert roc_auc_score(labels, shipped_scores) >= roc_auc_score(labels, crop) + MARGIN_OVER_BASELINE


def readme_sample_lines() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    return re.findall(r"^samples/\S+\tscore=.*$", readme, flags=re.MULTILINE)


def test_squid_score_prints_what_the_readme_shows():
    promised = readme_sample_lines()
    assert len(promised) >= 3
    files = [line.split("\t")[0] for line in promised]
    assert squid_score(*files).splitlines() == promised


def test_the_pneumonia_sample_scores_above_the_normal_one():
    rows = [
        json.loads(line)
        for line in squid_score(*sorted((REPO_ROOT / "samples").glob("*.jpeg")), "--json").splitlines()
    ]
    by_kind = {Path(r["file"]).name.split("-")[0]: r for r in rows}
    assert by_kind["pneumonia"]["score"] > by_kind["normal"]["score"]
    assert (by_kind["pneumonia"]["label"], by_kind["normal"]["label"]) == ("anomalous", "normal")


def test_the_spec90_operating_point_is_selectable_at_runtime(tmp_path: Path):
    metadata = SquidRuntime().metadata
    spec90 = metadata.operating_points["spec90"]
    assert spec90 != metadata.threshold
    sample = REPO_ROOT / "samples" / "normal-IM-0372-0001.jpeg"
    chosen = json.loads(squid_score(sample, "--json", "--operating-point", "spec90"))
    assert chosen["threshold"] == pytest.approx(spec90, abs=1e-4)
    refused = subprocess.run(
        [*SQUID, "score", str(sample), "--operating-point", "spec99"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode != 0 and "spec90" in refused.stderr + refused.stdout
