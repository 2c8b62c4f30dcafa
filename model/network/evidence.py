"""Where the discriminator's score comes from, pixel by pixel: integrated gradients, smoothed.

The raw score is the discriminator's logit f(x) (for an ensemble the members' mean logit, whose
gradient is the mean of theirs). Integrated gradients attribute f(x) - f(b) to the pixels, for a
baseline image b (the training normals' mean image): (x - b) times the gradient averaged along the
straight path from b to x. The sum of the attributions tends to f(x) - f(b) as the path is
sampled finer (completeness); with a handful of midpoint steps it is within a few percent. Each pixel says how
much moving it from the normal baseline to this image moved the logit, so a region the map ranks
high is one whose replacement by normal pixels changes the score (``bench/map_faithfulness.py``
measures exactly that).

The attributions are smoothed by a Gaussian (pixel-level attributions are speckled, and a reader
looks for regions), oriented so that positive = evidence for "anomalous", and the training normals'
mean of that map is subtracted: what remains is where this image is less normal than the normals
usually are (the blurry mean image is itself far from any real film, so every image's raw
attributions share a large common part). Its total is then the raw score's deviation from the
normals' mean, up to the path's discretisation; that small remainder is spread evenly, so the total
is exact.

The gradients come from :mod:`model.network.gradients`, written out as forward operations, so the
whole computation is part of the exported ONNX graph.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from model.network.ensemble import Judge, discriminators_of
from model.network.gradients import logit_and_input_gradient

PATH_STEPS = 1
SMOOTHING_FRACTION = 3 / 128


def integrated_gradients(
    judge: Judge, judged: torch.Tensor, baseline: torch.Tensor, steps: int = PATH_STEPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (N,) raw score of ``judged`` and its (N, 1, H, W) attributions relative to ``baseline``
    (1, 1, H, W), by the midpoint rule with ``steps`` points on the path."""
    members = discriminators_of(judge)
    delta = judged - baseline
    gradient = torch.zeros_like(judged)
    for step in range(steps):
        point = baseline + delta * ((step + 0.5) / steps)
        for discriminator in members:
            gradient = gradient + logit_and_input_gradient(discriminator, point)[1]
    return judge(judged), delta * gradient / (steps * len(members))


def gaussian_kernel(size: int) -> torch.Tensor:
    """A normalised 1-D Gaussian of sigma = size * SMOOTHING_FRACTION (3 px at 128 px)."""
    sigma = size * SMOOTHING_FRACTION
    radius = math.ceil(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def oriented_attributions(
    attributions: torch.Tensor, orientation: float, kernel: torch.Tensor
) -> torch.Tensor:
    """Attributions smoothed by the separable ``kernel`` and signed so that positive = anomalous."""
    radius = kernel.numel() // 2
    smoothed = F.conv2d(attributions, kernel.reshape(1, 1, 1, -1), padding=(0, radius))
    smoothed = F.conv2d(smoothed, kernel.reshape(1, 1, -1, 1), padding=(radius, 0))
    return orientation * smoothed


def evidence_map(
    attributions: torch.Tensor,
    raw: torch.Tensor,
    reference_raw: float,
    orientation: float,
    kernel: torch.Tensor,
    reference_map: torch.Tensor,
) -> torch.Tensor:
    """This image's oriented attributions minus the training normals' mean of them
    (``reference_map``), plus an even share of what is left, so the pixels add up to exactly
    ``orientation * (raw - reference_raw)``."""
    relative = oriented_attributions(attributions, orientation, kernel) - reference_map
    pixels = attributions.shape[-1] * attributions.shape[-2]
    unplaced = orientation * (raw - reference_raw) - relative.sum((1, 2, 3))
    return relative + (unplaced / pixels).reshape(-1, 1, 1, 1)
