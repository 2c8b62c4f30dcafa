"""Where the discriminator's score comes from: an exact decomposition of its logit over the image.

The discriminator ends in one linear layer over its whole last feature map (C x s x s, 4x4 for a
128 px input), so its logit is exactly a sum of s*s per-location terms: weights times features summed
over channels, plus an equal share of the bias. That is a map of the score itself, not of a signal
the score never used (the old |input - reconstruction| residual). Relative to the training normals'
mean map it shows where an image is less normal than the normals usually are, and its total is the
raw score's deviation from their mean raw score. Averaging :func:`contribution_map` over several
discriminators keeps all of this exact for an ensemble whose raw score is their mean logit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.network.discriminator import Discriminator


def contribution_map(discriminator: Discriminator, judged: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) judged images -> (N, 1, s, s) logit contributions; they sum to the logit."""
    features = discriminator.feature_map(judged)
    _, channels, side, _ = features.shape
    weights = discriminator.head.weight.reshape(1, channels, side, side)
    share = discriminator.head.bias.reshape(1, 1, 1, 1) / (side * side)
    return (features * weights).sum(1, keepdim=True) + share


def evidence_map(cells: torch.Tensor, reference: torch.Tensor, orientation: float, size: int) -> torch.Tensor:
    """``orientation * (cells - reference)`` spread over ``size`` x ``size`` pixels, total kept.

    Bilinear upsampling by an integer factor with half-pixel centres gives every cell a total
    weight of factor**2 (the edge clamping included), so dividing by that keeps the sum exactly: the
    map's pixels add up to ``orientation * (raw - reference raw)``. With orientation -1 (high logit
    = normal) positive pixels are evidence for "anomalous".
    """
    factor = size // cells.shape[-1]
    if factor * cells.shape[-1] != size:
        raise ValueError(f"input size {size} is not a multiple of the contribution map's {cells.shape[-1]}")
    delta = orientation * (cells - reference)
    upsampled = F.interpolate(delta, scale_factor=float(factor), mode="bilinear", align_corners=False)
    return upsampled / float(factor * factor)
