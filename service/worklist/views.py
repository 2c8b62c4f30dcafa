"""What the study viewer shows for one image: the film, the anomaly map as a layer, the model input
and its reconstruction, each as PNG, with the image's score.

Drawn on demand for a job's image (its source file is still in the import root) and once, at
scoring, for a node's image (the node deletes its spooled files): :func:`write_views` keeps them in
a folder that the API reads back with :func:`read_view`.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from model.atomic import atomic_write_bytes
from model.heatmap import map_layer_png
from model.imaging import ImageRejected
from model.runtime import SquidRuntime
from model.steps import Prepared, prepare
from service.jobs.results import image_key
from service.jobs.rows import Row, Status
from service.jobs.walker import resolve_inside
from service.payload import preview_png

FILM_SIDE = 512
VIEW_FILES = ("film", "map", "input", "reconstruction")
VIEWS_FOLDER = "views"


@dataclass(frozen=True)
class ImageView:
    """An image's scores and its four pictures (PNG bytes), film and map of one size."""

    score: float
    raw_score: float
    is_anomalous: bool
    threshold: float
    warnings: list[str]
    pictures: dict[str, bytes]  # VIEW_FILES -> PNG

    def meta(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "pictures"}


def render_view(runtime: SquidRuntime, item: Prepared) -> ImageView:
    """Score one prepared image with its map and reconstruction, and draw the viewer's pictures."""
    out = runtime.run(item.array[None], ["anomaly_map", "reconstruction"])
    raw = float(out["raw_score"][0])
    score = float(runtime.calibration.apply(out["raw_score"])[0])
    film = preview_png(item.decoded.pixels, FILM_SIDE)
    with Image.open(io.BytesIO(film)) as opened:
        size = opened.size
    pictures = {
        "film": film,
        "map": map_layer_png(out["anomaly_map"][0, 0], size, vmax=runtime.map_scale),
        "input": preview_png(np.asarray(item.array), FILM_SIDE),
        "reconstruction": preview_png(np.asarray(out["reconstruction"][0, 0]), FILM_SIDE),
    }
    return ImageView(
        score, raw, score >= runtime.threshold, runtime.threshold, list(item.decoded.warnings), pictures
    )


def view_of_file(runtime: SquidRuntime, path: Path, max_pixels: int) -> ImageView:
    """Read, decode, preprocess and render one file (raises ``OSError`` or ``ImageRejected``)."""
    return render_view(runtime, prepare(path.read_bytes(), runtime.preprocessing, max_pixels))


def write_views(runtime: SquidRuntime, root: Path, rows: list[Row], job_dir: Path, max_pixels: int) -> int:
    """Keep the view of each scored row under ``job_dir/views/<image key>/`` (the node's jobs: their
    sources are deleted once scored). A file that changed or vanished since it was scored gets none."""
    written = 0
    for row in rows:
        if row.status != Status.SCORED:
            continue
        try:
            view = view_of_file(runtime, resolve_inside(root, row.path), max_pixels)
        except (OSError, ImageRejected):
            continue
        save_view(view, job_dir / VIEWS_FOLDER / image_key(row.path))
        written += 1
    return written


def save_view(view: ImageView, folder: Path) -> None:
    for name, png in view.pictures.items():
        atomic_write_bytes(folder / f"{name}.png", png)
    atomic_write_bytes(folder / "view.json", json.dumps(view.meta()).encode())  # last: marks it whole


def read_view(folder: Path) -> ImageView | None:
    try:
        meta = json.loads((folder / "view.json").read_text(encoding="utf-8"))
        pictures = {name: (folder / f"{name}.png").read_bytes() for name in VIEW_FILES}
    except (OSError, ValueError):
        return None
    return ImageView(**meta, pictures=pictures)
