"""The shipped artifact's heatmap explains its score: what it ranks highest is what moves the score.

The deletion test of ``bench/map_faithfulness.py`` (the benchmark runs it on all 182 test-dev
pneumonia images and every fraction) on a subset, at the 10 % the issue tracker set as the bar.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.map_faithfulness import deletion, load
from model.artifact_source import DEFAULT_ARTIFACT
from model.runtime import SquidRuntime

pytestmark = pytest.mark.data

IMAGES = 48


def test_replacing_the_top_ten_percent_with_normal_pixels_lowers_the_score_more_than_a_moved_mask(
    shared_data: Path,
) -> None:
    runtime = SquidRuntime(DEFAULT_ARTIFACT, intra_op_threads=1)
    prep = runtime.preprocessing
    images = load(shared_data / "zhanglab-224" / "test-dev" / "PNEUMONIA", prep, IMAGES)
    donors = load(shared_data / "zhanglab-224" / "train" / "NORMAL", prep, IMAGES, np.random.default_rng(0))
    maps = {"map": runtime.run(images)["anomaly_map"][:, 0]}
    result = deletion(runtime, images, donors, maps, (0.10,), seed=0)["curves"]["0.10"]["map"]
    assert result["mean_drop_beyond_moved"] > 0.01, result
    assert result["win_rate_vs_moved"] > 0.5, result
