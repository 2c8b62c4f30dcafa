"""Does the anomaly map point at what drives the score? Deletion curves on held-out pneumonia images.

Usage: python bench/map_faithfulness.py ARTIFACT [--limit N] [--threads 1]

For each pneumonia image and each fraction k, the k % of pixels a map ranks highest are replaced by
the same pixels of a training normal (a blur would be judged by the discriminator for being a blur),
and the calibrated score is measured again. Controls: the same mask moved to a random place (same
area, same shape, hence the same seam length), and the old map, the smoothed |input -
reconstruction| residual, computed here from the artifact's reconstruction exactly as the old
artifacts did. A faithful map lowers the score more than its moved mask, on most images.

Writes docs/bench/map_faithfulness.json and docs/img/map-faithfulness.png (or --out/--plot).
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import convolve1d

from model.imaging import read_path
from model.preprocess import Preprocessing
from model.runtime import SquidRuntime

DATA = Path("/work/shared/data/zhanglab-224")
FRACTIONS = (0.01, 0.02, 0.05, 0.10, 0.20, 0.30)
HEADLINE = 0.10
BATCH = 32

Array = NDArray[np.float32]


def load(
    folder: Path, prep: Preprocessing, limit: int | None, rng: np.random.Generator | None = None
) -> Array:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpeg", ".jpg", ".dcm"))
    if rng is not None:
        files = [files[i] for i in rng.permutation(len(files))]
    return np.stack([prep(read_path(p).pixels) for p in files[:limit]])


def residual_map(images: Array, reconstructions: Array) -> Array:
    """The old artifact map: |input - reconstruction| smoothed by a Gaussian of sigma = size / 40."""
    size = images.shape[-1]
    sigma = max(1.0, size / 40)
    radius = round(3 * sigma)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    residual = np.abs(images - reconstructions).astype(np.float64)
    smoothed = convolve1d(
        convolve1d(residual, kernel, axis=-1, mode="mirror"), kernel, axis=-2, mode="mirror"
    )
    return smoothed.astype(np.float32)


def top_mask(heat: Array, fraction: float) -> NDArray[np.bool_]:
    count = max(1, round(fraction * heat.size))
    order = np.argsort(heat, axis=None, kind="stable")[::-1][:count]
    mask = np.zeros(heat.size, bool)
    mask[order] = True
    return mask.reshape(heat.shape)


def moved(mask: NDArray[np.bool_], rng: np.random.Generator) -> NDArray[np.bool_]:
    """The same shape shifted to a random place inside the image (wrapped round when it spans it)."""
    rows, cols = np.nonzero(mask)
    h, w = mask.shape
    dy = int(rng.integers(-rows.min(), h - rows.max())) if rows.max() - rows.min() < h - 1 else 0
    dx = int(rng.integers(-cols.min(), w - cols.max())) if cols.max() - cols.min() < w - 1 else 0
    if dy == 0 and dx == 0:
        return np.roll(
            mask, (int(rng.integers(h // 4, 3 * h // 4)), int(rng.integers(w // 4, 3 * w // 4))), (0, 1)
        )
    return np.roll(mask, (dy, dx), (0, 1))


def scores(runtime: SquidRuntime, images: Array) -> NDArray[np.float64]:
    out = [runtime.score(images[i : i + BATCH]) for i in range(0, len(images), BATCH)]
    return np.array([r.score for chunk in out for r in chunk])


def deletion(
    runtime: SquidRuntime,
    images: Array,
    donors: Array,
    maps: dict[str, Array],
    fractions: tuple[float, ...],
    seed: int,
) -> dict[str, Any]:
    base = scores(runtime, images)
    curves: dict[str, Any] = {}
    for fraction in fractions:
        row: dict[str, Any] = {}
        for name, heat in maps.items():
            rng = np.random.default_rng(seed)
            masks = np.stack([top_mask(h, fraction) for h in heat])
            shifted = np.stack([moved(m, rng) for m in masks])
            drop = base - scores(runtime, np.where(masks, donors, images))
            drop_moved = base - scores(runtime, np.where(shifted, donors, images))
            row[name] = {
                "mean_drop": float(drop.mean()),
                "mean_drop_moved": float(drop_moved.mean()),
                "mean_drop_beyond_moved": float((drop - drop_moved).mean()),
                "win_rate_vs_moved": float((drop > drop_moved).mean()),
                "drops": [round(float(d), 5) for d in drop],
                "drops_moved": [round(float(d), 5) for d in drop_moved],
            }
        names = list(maps)
        if len(names) == 2:
            a, b = (np.array(row[n]["drops"]) for n in names)
            row[f"win_rate_{names[0]}_vs_{names[1]}"] = float((a > b).mean())
        curves[f"{fraction:.2f}"] = row
    return {"base_scores": [round(float(s), 5) for s in base], "curves": curves}


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = result["curves"]
    xs = [float(k) * 100 for k in curves]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    styles: dict[str, tuple[str, str]] = {
        "map": ("C3", f"artifact map ({result['artifact_map']})"),
        "residual": ("C0", "old residual map"),
    }
    for name, (colour, label) in styles.items():
        if name not in next(iter(curves.values())):
            continue
        ax.plot(
            xs, [c[name]["mean_drop"] for c in curves.values()], "-o", color=colour, label=f"{label}: top k %"
        )
        ax.plot(
            xs,
            [c[name]["mean_drop_moved"] for c in curves.values()],
            "--",
            color=colour,
            label=f"{label}: moved mask",
        )
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel("pixels replaced by a training normal's (% of image)")
    ax.set_ylabel("mean drop of the calibrated score")
    ax.set_title(f"Deletion on {result['images']} test-dev pneumonia images\n{result['model']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--pneumonia", type=Path, default=DATA / "test-dev" / "PNEUMONIA")
    parser.add_argument("--normals", type=Path, default=DATA / "train" / "NORMAL")
    parser.add_argument("--limit", type=int, default=None, help="at most this many pneumonia images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/bench/map_faithfulness.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/img/map-faithfulness.png"))
    args = parser.parse_args(argv)
    runtime = SquidRuntime(args.artifact, intra_op_threads=args.threads)
    meta = runtime.metadata
    prep = Preprocessing.from_spec(meta.preprocessing, meta.input_size)
    images = load(args.pneumonia, prep, args.limit)
    rng = np.random.default_rng(args.seed)
    donors = load(args.normals, prep, len(images), rng)
    donors = donors[np.arange(len(images)) % len(donors)]
    out = runtime.run(images)
    maps: dict[str, Array] = {"residual": residual_map(images, out["reconstruction"][:, 0])}
    kind = meta.anomaly_map.get("method", "residual")
    if kind != "residual":
        maps = {"map": out["anomaly_map"][:, 0], **maps}
    summary: Callable[[dict[str, Any]], dict[str, Any]] = lambda c: {  # noqa: E731
        k: v for k, v in c.items() if not k.startswith("drops")
    }
    result: dict[str, Any] = {
        "model": f"{meta.model_name} {meta.model_version}",
        "artifact": args.artifact.name,
        "artifact_map": kind,
        "score_on": meta.training.get("config", {}).get("score_on", "reconstruction"),
        "intensity": prep.intensity,
        "images": len(images),
        "pneumonia": str(args.pneumonia),
        "donors": str(args.normals),
        "seed": args.seed,
        "machine": platform.machine(),
        **deletion(runtime, images, donors, maps, FRACTIONS, args.seed),
    }
    headline = result["curves"][f"{HEADLINE:.2f}"]
    result["headline_top10"] = {
        name: summary(value) if isinstance(value, dict) else value for name, value in headline.items()
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.plot)
    print(json.dumps(result["headline_top10"], indent=1))


if __name__ == "__main__":
    main()
