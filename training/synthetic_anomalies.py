"""Structural anomalies made from normal chest films, to measure what a detector sees.

The thesis tests SQUID on DigitAnatomy, where a digit is flipped, misplaced, missing or foreign
(Algorithm 1). This module is the chest-film counterpart: each normal film is altered in one way a
radiologist flags at a glance, and a detector is judged by how well it ranks the altered copies above
the same films unaltered. The families:

- ``misplaced``: anatomy in the wrong place. ``mirror`` flips the whole film left-right (the heart,
  the gastric bubble and the side marker on the wrong side); ``swap`` exchanges a block of one lung
  field with a block of the other side or of another zone.
- ``foreign_body``: a dense disc from button to coin size in a lung field (the swallowed or inhaled
  coin of a child), sometimes with the bright rim of a button battery; or a thin wire-like line.
- ``lucent``: a band along the lateral wall of one lung with no lung markings, bordered by a thin
  pleural line (pneumothorax-like).
- ``opaque``: the lower part of one lung field opacified up to a meniscus (effusion or collapse-like).

Everything works on the display-ready film (before the model's preprocessing), so an altered copy
can be written to a file and sent through any channel. Size, place and side are drawn from a seeded
generator. These films are for selection and reporting only: the model never trains on them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

FAMILIES: dict[str, tuple[str, ...]] = {
    "misplaced": ("mirror", "swap"),
    "foreign_body": ("coin", "wire"),
    "lucent": ("lucent",),
    "opaque": ("opaque",),
}
KINDS: tuple[str, ...] = tuple(kind for kinds in FAMILIES.values() for kind in kinds)
FAMILY_OF: dict[str, str] = {kind: family for family, kinds in FAMILIES.items() for kind in kinds}

Image = NDArray[np.float32]


@dataclass(frozen=True)
class LungFields:
    """Boolean masks of the two lung fields in image coordinates (image left = patient right)."""

    left: NDArray[np.bool_]
    right: NDArray[np.bool_]

    def side(self, name: str) -> NDArray[np.bool_]:
        return self.left if name == "left" else self.right


@dataclass(frozen=True)
class Alteration:
    """What was done to one film: the kind, the side it was done on and the changed pixels."""

    kind: str
    side: str
    mask: NDArray[np.bool_]

    @property
    def family(self) -> str:
        return FAMILY_OF[self.kind]


def lung_fields(image: NDArray[np.floating]) -> LungFields:
    """Where the lungs are: the larger dark connected region inside the body on each side of the spine.

    A heuristic, not a segmentation: the film is smoothed; the air around the body (dark and
    connected to the border) is removed; of the thorax (rows 12-88 %, columns 6-94 %) inside the body,
    the darker 45 % is kept, split at the brightest column near the middle (the spine), and the
    largest connected piece on each side, opened (to cut thin bridges to the chest wall) and with
    its holes filled, is that side's lung. Where it finds too little, a box at the usual place of a
    lung field stands in.
    """
    h, w = image.shape
    smooth = ndimage.gaussian_filter(np.asarray(image, np.float64), sigma=max(1.0, 0.02 * w))
    low, mid = np.percentile(smooth, [2, 50])
    outside = smooth < low + 0.3 * (mid - low)
    labels, _ = ndimage.label(outside)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    air = np.isin(labels, border[border > 0])
    body = ndimage.binary_erosion(~air, iterations=max(1, int(0.02 * w)))
    top, bottom, left, right = int(0.12 * h), int(0.88 * h), int(0.06 * w), int(0.94 * w)
    box = np.zeros_like(smooth, dtype=bool)
    box[top:bottom, left:right] = True
    box &= body
    if box.sum() < 0.1 * h * w:
        box[top:bottom, left:right] = True
    dark = box & (smooth <= np.percentile(smooth[box], 45))
    centre = slice(int(0.35 * w), int(0.65 * w))
    midline = int(0.35 * w) + int(np.argmax(smooth[top:bottom, centre].mean(axis=0)))
    columns = np.arange(w)[None, :]
    masks = []
    for side_cols, (x0, x1) in (
        (columns < midline - 0.03 * w, (0.12, 0.45)),
        (columns > midline + 0.03 * w, (0.55, 0.88)),
    ):
        mask = _largest_component(dark & side_cols)
        mask = _largest_component(ndimage.binary_opening(mask, iterations=max(1, int(0.025 * w))))
        mask = ndimage.binary_fill_holes(mask)
        if mask.sum() < 0.02 * h * w:
            mask = np.zeros((h, w), dtype=bool)
            mask[int(0.2 * h) : int(0.75 * h), int(x0 * w) : int(x1 * w)] = True
        masks.append(mask)
    return LungFields(left=masks[0], right=masks[1])


def _largest_component(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = ndimage.sum(mask, labels, index=range(1, count + 1))
    return np.asarray(labels == 1 + int(np.argmax(sizes)))


def _levels(image: Image, mask: NDArray[np.bool_]) -> tuple[float, float, float]:
    """Levels from this film's own histogram: free air in the chest (darker than any lung, brighter
    than the air outside the body), soft tissue, and the densest structures."""
    lung = image[mask] if mask.any() else image.ravel()
    darkest_lung, outside = float(np.percentile(lung, 2)), float(np.percentile(image, 1))
    return (
        darkest_lung - 0.3 * max(0.0, darkest_lung - outside),
        float(np.percentile(image, 80)),
        float(np.percentile(image, 99.9)),
    )


def _blend(image: Image, target: NDArray[np.floating] | float, alpha: NDArray[np.floating]) -> Image:
    return (image * (1 - alpha) + np.asarray(target) * alpha).astype(np.float32)


def _feather(mask: NDArray[np.bool_], sigma: float) -> NDArray[np.float64]:
    return np.clip(ndimage.gaussian_filter(mask.astype(np.float64), sigma), 0.0, 1.0)


def _point_in(mask: NDArray[np.bool_], rng: np.random.Generator, margin: int) -> tuple[int, int]:
    inner = ndimage.binary_erosion(mask, iterations=max(1, margin)) if margin > 0 else mask
    ys, xs = np.nonzero(inner if inner.any() else mask)
    i = int(rng.integers(len(ys)))
    return int(ys[i]), int(xs[i])


def mirror(image: Image, lungs: LungFields, rng: np.random.Generator) -> tuple[Image, Alteration]:
    del lungs, rng
    return np.ascontiguousarray(image[:, ::-1]), Alteration("mirror", "both", np.ones(image.shape, bool))


def swap(image: Image, lungs: LungFields, rng: np.random.Generator) -> tuple[Image, Alteration]:
    """Exchange a square block of a lung field with one of the other side (or, one time in three, of
    another zone of the same side, so the exchange is not always a left-right one)."""
    h, w = image.shape
    size = int(rng.uniform(0.16, 0.26) * w)
    side = str(rng.choice(["left", "right"]))
    first = lungs.side(side)
    second = first if rng.random() < 1 / 3 else lungs.side("right" if side == "left" else "left")
    out = image.copy()
    mask = np.zeros(image.shape, bool)
    for _ in range(20):
        (y0, x0), (y1, x1) = _point_in(first, rng, 0), _point_in(second, rng, 0)
        y0, y1 = (int(np.clip(y - size // 2, 0, h - size)) for y in (y0, y1))
        x0, x1 = (int(np.clip(x - size // 2, 0, w - size)) for x in (x0, x1))
        if abs(y0 - y1) >= size or abs(x0 - x1) >= size:
            break
    a = image[y0 : y0 + size, x0 : x0 + size].copy()
    b = image[y1 : y1 + size, x1 : x1 + size].copy()
    out[y0 : y0 + size, x0 : x0 + size], out[y1 : y1 + size, x1 : x1 + size] = b, a
    mask[y0 : y0 + size, x0 : x0 + size] = mask[y1 : y1 + size, x1 : x1 + size] = True
    return out, Alteration("swap", side, mask)


def coin(image: Image, lungs: LungFields, rng: np.random.Generator) -> tuple[Image, Alteration]:
    """A dense disc, radius 2.5-5.5 % of the film's width (a button to a large coin on a child's film),
    in one lung field; one in three has the brighter rim and darker step of a button battery."""
    h, w = image.shape
    side = str(rng.choice(["left", "right"]))
    radius = rng.uniform(0.025, 0.055) * w
    cy, cx = _point_in(lungs.side(side), rng, int(radius))
    yy, xx = np.mgrid[0:h, 0:w]
    dist = np.hypot(yy - cy, xx - cx)
    alpha = np.clip(radius + 0.5 - dist, 0.0, 1.0)
    _, _, dense = _levels(image, lungs.side(side))
    target = np.full(image.shape, dense, np.float64)
    if rng.random() < 1 / 3:
        rim = np.clip(1.0 - np.abs(dist - 0.8 * radius) / (0.12 * radius), 0.0, 1.0)
        target = dense * (0.93 + 0.07 * rim)
    opacity = rng.uniform(0.85, 1.0)
    return _blend(image, target, alpha * opacity), Alteration("coin", side, alpha > 0)


def wire(image: Image, lungs: LungFields, rng: np.random.Generator) -> tuple[Image, Alteration]:
    """A thin dense curve (a wire or line) crossing one lung field from top to bottom."""
    h, w = image.shape
    side = str(rng.choice(["left", "right"]))
    field = lungs.side(side)
    ys, xs = np.nonzero(field)
    t = np.linspace(0.0, 1.0, 200)
    y = ys.min() + t * (ys.max() - ys.min())
    x = float(np.median(xs)) + rng.uniform(-0.08, 0.08) * w * np.sin(np.pi * t * rng.uniform(0.5, 2.0))
    line = np.zeros(image.shape, bool)
    line[np.clip(y.astype(int), 0, h - 1), np.clip(x.astype(int), 0, w - 1)] = True
    width = rng.uniform(0.006, 0.012) * w
    alpha = _feather(ndimage.binary_dilation(line, iterations=max(1, round(width))), 0.6)
    _, _, dense = _levels(image, field)
    return _blend(image, dense, alpha * rng.uniform(0.8, 1.0)), Alteration("wire", side, alpha > 0.05)


def lucent(image: Image, lungs: LungFields, rng: np.random.Generator) -> tuple[Image, Alteration]:
    """The lateral part of one lung, 25-50 % of its width over 50-100 % of its height from the apex,
    hyperlucent and without lung markings, with a thin pleural line along its inner edge.

    The fine markings (vessels) go, the ribs stay at full contrast: they lie in the chest wall, in
    front of and behind the air. The region is darkened by 35-60 % of the gap between the lung and the
    air outside the body, never below that air.
    """
    side = str(rng.choice(["left", "right"]))
    field = lungs.side(side)
    rows = np.nonzero(field.any(axis=1))[0]
    top = rows.min()
    bottom = top + int(rng.uniform(0.5, 1.0) * (rows.max() - top))
    band = np.zeros(image.shape, bool)
    fraction = rng.uniform(0.25, 0.5)
    for row in range(top, bottom + 1):
        cols = np.nonzero(field[row])[0]
        if not len(cols):
            continue
        span = int(np.ceil(fraction * (cols.max() - cols.min() + 1)))
        if side == "left":
            band[row, cols.min() : cols.min() + span] = True
        else:
            band[row, cols.max() - span + 1 : cols.max() + 1] = True
    band = ndimage.binary_closing(band, iterations=2) & field
    outside = float(np.percentile(image, 1))
    lung_level = float(np.median(image[field])) if field.any() else float(np.median(image))
    without_markings = ndimage.gaussian_filter(image, 0.012 * image.shape[1])
    drop = rng.uniform(0.35, 0.6) * max(0.0, lung_level - outside)
    alpha = _feather(band, 1.0)
    out = _blend(image, np.maximum(without_markings - drop, outside), alpha)
    edge = band & ~ndimage.binary_erosion(band, iterations=1)
    inner = edge & ndimage.binary_dilation(field & ~band, iterations=2)
    line = _feather(inner, 0.5)
    return _blend(out, float(np.percentile(image[field], 60)), line * 0.8), Alteration("lucent", side, band)


def opaque(image: Image, lungs: LungFields, rng: np.random.Generator) -> tuple[Image, Alteration]:
    """The lower 25-60 % of one lung field filled with soft-tissue density up to a meniscus that
    climbs towards the chest wall."""
    h, w = image.shape
    side = str(rng.choice(["left", "right"]))
    field = lungs.side(side)
    rows = np.nonzero(field.any(axis=1))[0]
    cols = np.nonzero(field.any(axis=0))[0]
    level = rows.max() - rng.uniform(0.25, 0.6) * (rows.max() - rows.min())
    xx = np.arange(w)[None, :]
    lateral = (cols.min() - xx) if side == "left" else (xx - cols.max())
    span = max(1.0, float(cols.max() - cols.min()))
    climb = rng.uniform(0.05, 0.15) * h * np.clip(1.0 + lateral / span, 0.0, 1.0) ** 2
    yy = np.arange(h)[:, None]
    region = (yy >= level - climb) & ndimage.binary_dilation(field, iterations=3)
    _, tissue, _ = _levels(image, field)
    alpha = _feather(region, 1.5) * rng.uniform(0.8, 0.95)
    target = tissue + 0.1 * (image - ndimage.gaussian_filter(image, 3.0))
    return _blend(image, target, alpha), Alteration("opaque", side, region)


ALTER: dict[str, Callable[[Image, LungFields, np.random.Generator], tuple[Image, Alteration]]] = {
    "mirror": mirror,
    "swap": swap,
    "coin": coin,
    "wire": wire,
    "lucent": lucent,
    "opaque": opaque,
}


def alter(image: NDArray[np.floating], kind: str, rng: np.random.Generator) -> tuple[Image, Alteration]:
    """One altered copy of a display-ready grayscale film (any size, any intensity range)."""
    if kind not in ALTER:
        raise ValueError(f"unknown anomaly kind {kind!r}; choose one of {KINDS}")
    film = np.asarray(image, dtype=np.float32)
    return ALTER[kind](film, lung_fields(film), rng)


@dataclass(frozen=True)
class AlteredSet:
    """Altered copies of a set of normal films, one per film and kind, with what was done."""

    originals: list[Image]
    altered: dict[str, list[Image]]
    alterations: dict[str, list[Alteration]]


def make_altered_set(
    films: Sequence[NDArray[np.floating]], seed: int = 0, kinds: Sequence[str] = KINDS
) -> AlteredSet:
    """Every film altered once in every kind; film i, kind k always gets the same alteration for a
    seed, whatever else is in the set."""
    originals = [np.asarray(f, dtype=np.float32) for f in films]
    altered: dict[str, list[Image]] = {k: [] for k in kinds}
    alterations: dict[str, list[Alteration]] = {k: [] for k in kinds}
    for i, film in enumerate(originals):
        lungs = lung_fields(film)
        for j, kind in enumerate(kinds):
            rng = np.random.default_rng([seed, i, KINDS.index(kind) if kind in KINDS else j])
            image, what = ALTER[kind](film, lungs, rng)
            altered[kind].append(image)
            alterations[kind].append(what)
    return AlteredSet(originals, altered, alterations)
