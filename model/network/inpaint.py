"""The in-painting block (thesis section 3.4, Fig. 3.4/3.5) and its masked shortcut (Eq. 3.3/3.4)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.network.memory import SpaceAwareMemoryQueue

_MASKED = -1e9


def neighbour_table(grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each patch, the indices of its 8 spatial neighbours and which of them are padding.

    Padding slots point at index ``grid*grid`` (a zero token) and are masked out of attention.
    A 1x1 grid has no neighbours, so its only patch attends to its own memory-augmented feature.
    """
    pad = grid * grid
    index = torch.full((pad, 8), pad, dtype=torch.long)
    valid = torch.zeros(pad, 8, dtype=torch.bool)
    for row in range(grid):
        for col in range(grid):
            slot = 0
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if dr == dc == 0:
                        continue
                    r, c = row + dr, col + dc
                    if 0 <= r < grid and 0 <= c < grid:
                        index[row * grid + col, slot] = r * grid + c
                        valid[row * grid + col, slot] = True
                    slot += 1
    if grid == 1:
        index[0, 0], valid[0, 0] = 0, True
    return index, valid


class NeighbourAttention(nn.Module):
    """One Transformer layer: a patch's own feature queries its neighbours' augmented features.

    Post-norm with residuals as in the reference code: the attention output is normalised and
    added to the patch's own memory-augmented feature, then an MLP sub-layer follows.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        hidden = max(1, int(dim * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(
        self, query: torch.Tensor, memory: torch.Tensor, neighbours: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """query (B, R, D) patch features; memory (B, R+1, D) augmented features plus a zero token.

        Keys and values are projected once per patch and then gathered into each patch's 8-neighbour
        window (``neighbours``: (R, 8) indices into memory, ``bias``: (R, 8) additive mask), which is
        eight times cheaper than projecting every window separately.
        """
        b, r, d = query.shape
        h, hd = self.heads, d // self.heads
        q = self.q(query).reshape(b, r, h, 1, hd)
        k = self.k(memory)[:, neighbours].reshape(b, r, 8, h, hd).transpose(2, 3)
        v = self.v(memory)[:, neighbours].reshape(b, r, 8, h, hd).transpose(2, 3)
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd) + bias[None, :, None, None, :]
        attended = (torch.softmax(scores, dim=-1) @ v).reshape(b, r, d)
        x = F.relu(self.norm1(self.proj(attended)) + memory[:, :r])
        return F.relu(self.norm2(self.mlp(x)) + x)


class InpaintingBlock(nn.Module):
    """Bottleneck in -> memory queue -> neighbour attention -> bottleneck out, with masked shortcut."""

    neighbours: torch.Tensor
    attention_bias: torch.Tensor
    position: torch.Tensor

    def __init__(
        self,
        channels: int,
        bottleneck: int,
        size: int,
        grid: int,
        queue_items: int,
        top_k: int,
        heads: int,
        mlp_ratio: float,
        rho: float,
        position_code: bool,
    ) -> None:
        super().__init__()
        self.grid, self.size, self.bottleneck, self.rho = grid, size, bottleneck, rho
        regions = grid * grid
        dim = bottleneck * size * size
        self.squeeze = nn.Sequential(
            nn.Conv2d(channels, bottleneck, 1, bias=False), nn.BatchNorm2d(bottleneck), nn.ReLU()
        )
        self.queue = SpaceAwareMemoryQueue(regions, queue_items, dim, top_k)
        self.attention = NeighbourAttention(dim, heads, mlp_ratio)
        index, valid = neighbour_table(grid)
        self.register_buffer("neighbours", index, persistent=False)
        bias = torch.where(valid, 0.0, _MASKED)
        self.register_buffer("attention_bias", bias, persistent=False)
        bits = max(1, math.ceil(math.log2(regions))) if position_code and regions > 1 else 0
        codes = torch.tensor([[(r >> b) & 1 for b in reversed(range(bits))] for r in range(regions)])
        self.register_buffer("position", codes.float(), persistent=False)
        self.expand = nn.Sequential(
            nn.Conv2d(bottleneck + bits, channels, 1), nn.BatchNorm2d(channels), nn.ReLU()
        )
        self.pending: torch.Tensor | None = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B*regions, C, s, s) patch features -> in-painted features of the same shape."""
        regions = self.grid * self.grid
        n = features.shape[0]
        b = n // regions
        squeezed = self.squeeze(features)
        tokens = squeezed.reshape(b, regions, -1)
        if self.training:
            self.pending = tokens.detach()
        augmented = self.queue.read(tokens)
        padded = torch.cat([augmented, torch.zeros_like(augmented[:, :1])], dim=1)
        out = self.attention(tokens, padded, self.neighbours, self.attention_bias)
        out = out.reshape(n, self.bottleneck, self.size, self.size)
        if self.position.shape[1]:
            codes = self.position.repeat(b, 1)[:, :, None, None].expand(-1, -1, self.size, self.size)
            out = torch.cat([out, codes], dim=1)
        inpainted = self.expand(out)
        if self.training and self.rho < 1.0:
            keep = torch.bernoulli(torch.full((n, 1, self.size, self.size), self.rho, device=features.device))
            return keep * inpainted + (1 - keep) * features
        return inpainted

    def commit_to_queue(self) -> None:
        """Copy the last training batch's features into the queue (call after a generator step)."""
        if self.pending is not None:
            self.queue.write(self.pending)
            self.pending = None
