"""Splitting an image batch into a grid of non-overlapping patches and putting it back."""

from __future__ import annotations

import torch


def split_patches(x: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, H, W) -> (B*grid*grid, C, H/grid, W/grid), patches in row-major order per image."""
    b, c, h, w = x.shape
    ph, pw = h // grid, w // grid
    x = x.reshape(b, c, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b * grid * grid, c, ph, pw)


def merge_patches(x: torch.Tensor, grid: int) -> torch.Tensor:
    """Inverse of :func:`split_patches`."""
    n, c, ph, pw = x.shape
    b = n // (grid * grid)
    x = x.reshape(b, grid, grid, c, ph, pw).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, grid * ph, grid * pw)
