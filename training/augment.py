"""The thesis augmentation: small random translation and scaling only (section 4.1.5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_affine(
    images: torch.Tensor,
    translate: float,
    scale_range: tuple[float, float],
    generator: torch.Generator,
) -> torch.Tensor:
    """Translate by up to ``translate`` of the size in each direction and scale, zero fill."""
    n = images.shape[0]
    if translate == 0 and scale_range == (1.0, 1.0):
        return images
    low, high = scale_range
    scale = torch.rand(n, generator=generator) * (high - low) + low
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * translate * 2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1 / scale
    theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
