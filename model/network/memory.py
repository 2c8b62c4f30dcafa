"""Memories: the space-aware memory queue of the in-painting block and the decoder memory matrices."""

from __future__ import annotations

import math

import torch
from torch import nn

from model.network.shrinkage import gumbel_shrinkage


class SpaceAwareMemoryQueue(nn.Module):
    """One FIFO queue of normal patch features per patch position (thesis section 3.3).

    Items are detached copies of encoded training features; they are not learned. The queue and
    its write pointers are buffers, so they travel in the checkpoint and are baked into the export.
    """

    items: torch.Tensor
    pointers: torch.Tensor

    def __init__(self, regions: int, size: int, dim: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        bound = 1.0 / math.sqrt(dim)
        self.register_buffer("items", torch.empty(regions, size, dim).uniform_(-bound, bound))
        self.register_buffer("pointers", torch.zeros(regions, dtype=torch.long))

    def read(self, features: torch.Tensor) -> torch.Tensor:
        """(B, regions, dim) -> (B, regions, dim): each feature as a sparse mix of its region's items.

        Similarity is the raw dot product with the region's own items (Eq. 3.1); no gradient
        reaches the queue.
        """
        items = self.items.detach()
        logits = torch.einsum("brd,rnd->brn", features, items)
        weights = gumbel_shrinkage(logits, self.top_k)
        return torch.einsum("brn,rnd->brd", weights, items)

    @torch.no_grad()
    def write(self, features: torch.Tensor) -> None:
        """Copy a batch of (B, regions, dim) features in at each region's pointer, wrapping around."""
        batch, regions, _ = features.shape
        size = self.items.shape[1]
        features = features.detach()
        if batch >= size:
            features, batch = features[-size:], size
        for region in range(regions):
            start = int(self.pointers[region])
            slots = (torch.arange(batch) + start) % size
            self.items[region, slots] = features[:, region].to(self.items.dtype)
            self.pointers[region] = (start + batch) % size


class MemoryMatrix(nn.Module):
    """Learned MemAE-style memories for one per-patch decoder level of the student generator.

    Each patch map is cut into ``windows x windows`` sub-windows; sub-window j (by position inside the
    patch, shared across patches as in the reference code) is rebuilt from memory j with Gumbel
    shrinkage. During training a Bernoulli(rho) mask per location keeps the memory output, the rest
    passes through (the masked shortcut); at inference the output is the memory output only.
    """

    def __init__(self, channels: int, size: int, slots: int, windows: int, top_k: int, rho: float) -> None:
        super().__init__()
        if size % windows:
            raise ValueError(f"feature size {size} not divisible into {windows} windows")
        self.windows, self.window = windows, size // windows
        self.top_k, self.rho = top_k, rho
        dim = channels * self.window**2
        bound = 1.0 / math.sqrt(dim)
        self.slots = nn.Parameter(torch.empty(windows * windows, slots, dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g, s = self.windows, self.window
        cells = x.reshape(n, c, g, s, g, s).permute(0, 2, 4, 1, 3, 5).reshape(n, g * g, c * s * s)
        weights = gumbel_shrinkage(torch.einsum("nwd,wmd->nwm", cells, self.slots), self.top_k)
        rebuilt = torch.einsum("nwm,wmd->nwd", weights, self.slots)
        out = rebuilt.reshape(n, g, g, c, s, s).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)
        if self.training and self.rho < 1.0:
            keep = torch.bernoulli(torch.full((n, 1, h, w), self.rho, device=x.device))
            out = keep * out + (1 - keep) * x
        return out
