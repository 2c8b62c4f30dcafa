"""The overlay's colour scale: fixed per artifact, so a colour means the same evidence on every image."""

from __future__ import annotations

import numpy as np

from model.heatmap import overlay_rgb


def test_fixed_scale_gives_the_same_colour_for_the_same_evidence_on_different_images() -> None:
    image = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    weak = np.zeros((64, 64), np.float32)
    weak[:8, :8] = 0.5
    strong = weak.copy()
    strong[40:, 40:] = 2.0  # a second, stronger region must not dim the first one
    a = overlay_rgb(image, weak, max_side=64, vmax=1.0)
    b = overlay_rgb(image, strong, max_side=64, vmax=1.0)
    np.testing.assert_array_equal(a[2:6, 2:6], b[2:6, 2:6])
    # Per-image scaling (no vmax) would have changed the first region's colour.
    assert not np.array_equal(overlay_rgb(image, weak, max_side=64)[2:6, 2:6], a[2:6, 2:6])


def test_no_evidence_leaves_the_x_ray_uncoloured() -> None:
    image = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    gray = overlay_rgb(image, np.zeros((64, 64), np.float32), max_side=64, vmax=1.0)
    more_normal = overlay_rgb(image, np.full((64, 64), -3.0, np.float32), max_side=64, vmax=1.0)
    np.testing.assert_array_equal(gray, more_normal)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    hot = overlay_rgb(image, np.full((64, 64), 5.0, np.float32), max_side=64, vmax=1.0)
    assert not np.array_equal(hot[..., 0], hot[..., 2])
