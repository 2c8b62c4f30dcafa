"""The viewer's map layer is the overlay the API draws, split in two: film below, map above."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from model.heatmap import map_layer_png, overlay_rgb
from service.payload import preview_png, thumbnail_png


def test_the_map_layer_at_the_overlays_opacity_gives_the_overlay() -> None:
    rng = np.random.default_rng(0)
    film = rng.random((300, 260)).astype(np.float32) * 4000
    anomaly_map = (rng.random((64, 64)).astype(np.float32) - 0.3) * 2  # some pixels below 0: no colour
    expected = overlay_rgb(film, anomaly_map, alpha=0.45, max_side=512, vmax=1.0).astype(np.float32)
    base = np.asarray(Image.open(io.BytesIO(preview_png(film, 512))).convert("RGB"), np.float32)
    layer = np.asarray(Image.open(io.BytesIO(map_layer_png(anomaly_map, (260, 300), vmax=1.0))), np.float32)
    weight = 0.45 * layer[..., 3:] / 255  # what the page's CSS opacity of 0.45 does
    composed = (1 - weight) * base + weight * layer[..., :3]
    assert composed.shape == expected.shape
    assert np.abs(composed - expected).max() <= 3  # 8-bit rounding of the film and the alpha
    no_evidence = map_layer_png(-np.abs(anomaly_map), (260, 300), vmax=1.0)
    assert Image.open(io.BytesIO(no_evidence)).getextrema()[3] == (0, 0)  # no more than the normals: clear


def test_a_large_films_thumbnail_matches_one_drawn_from_every_pixel() -> None:
    y, x = np.mgrid[0:2048, 0:1800]
    film = (np.sin(x / 150) + np.cos(y / 90)).astype(np.float32)
    fast = np.asarray(Image.open(io.BytesIO(thumbnail_png(film, 96))), np.float32)
    full = np.asarray(Image.open(io.BytesIO(preview_png(film, 96))), np.float32)
    assert fast.shape == full.shape == (96, 84)
    assert np.abs(fast - full).mean() < 3
