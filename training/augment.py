"""Training augmentation: the thesis' small translation and scaling (section 4.1.5), and optional
exposure jitter of the normals (off in the thesis presets)."""

from __future__ import annotations

import math

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


def random_intensity(
    images: torch.Tensor,
    gamma_range: tuple[float, float],
    window_jitter: float,
    blur_sigma_max: float,
    generator: torch.Generator,
    noise_sigma_max: float = 0.0,
) -> torch.Tensor:
    """Exposure jitter of normals, so that haze, contrast and detector noise alone do not look
    anomalous.

    A random gamma (a hazier or darker film), a random intensity window (the two ends moved inwards
    by up to ``window_jitter``), a random Gaussian blur and additive Gaussian noise (sigma drawn up to
    ``noise_sigma_max`` per image); the result is min-max normalised again, because serving always
    feeds the network min-max normalised images.
    """
    n = images.shape[0]
    out = images
    if gamma_range != (1.0, 1.0):
        low, high = (math.log(g) for g in gamma_range)
        gamma = torch.exp(torch.rand(n, generator=generator) * (high - low) + low)
        out = out.clamp_min(0).pow(gamma.view(n, 1, 1, 1))
    if window_jitter > 0:
        lo = torch.rand(n, generator=generator).view(n, 1, 1, 1) * window_jitter
        hi = 1 - torch.rand(n, generator=generator).view(n, 1, 1, 1) * window_jitter
        out = ((out - lo) / (hi - lo)).clamp(0, 1)
    if blur_sigma_max > 0:
        sigma = torch.rand(n, generator=generator) * blur_sigma_max
        out = torch.stack([_blur(image, float(s)) for image, s in zip(out, sigma, strict=True)])
    if noise_sigma_max > 0:
        sigma = torch.rand(n, generator=generator).view(n, 1, 1, 1) * noise_sigma_max
        out = out + sigma * torch.randn(out.shape, generator=generator)
    if out is images:
        return images
    flat = out.flatten(1)
    low_v, high_v = flat.min(1).values.view(n, 1, 1, 1), flat.max(1).values.view(n, 1, 1, 1)
    return (out - low_v) / (high_v - low_v).clamp_min(1e-6)


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma < 0.3:
        return image
    radius = max(1, math.ceil(2.5 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    padded = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(padded, kernel.view(1, 1, -1, 1))[0]
