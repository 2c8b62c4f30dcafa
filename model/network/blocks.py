"""Convolutional building blocks: the thesis uses plain conv + BN + ReLU everywhere."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_stage(in_ch: int, out_ch: int, convs: int, stride: int) -> nn.Sequential:
    """`convs` 3x3 conv+BN+ReLU layers; the first one carries the stride."""
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [
            nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, 3, stride if i == 0 else 1, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class UpStage(nn.Module):
    """Bilinear x2 upsampling, optional concatenation of an encoder skip, then a conv stage."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, convs: int) -> None:
        super().__init__()
        self.uses_skip = skip_ch > 0
        self.conv = conv_stage(in_ch + skip_ch, out_ch, convs, stride=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        if self.uses_skip:
            assert skip is not None
            x = torch.cat([skip, x], dim=1)
        return self.conv(x)


class ScoreNorm2d(nn.BatchNorm2d):
    """BatchNorm whose inference statistics are selectable, so a score never depends on the batch.

    ``mode="eval"`` uses the running statistics; ``mode="instance"`` normalises each image with its
    own spatial statistics and the learned affine parameters, which is what the reference scoring
    (train-mode BN at batch size 1) computes, without its dependence on the other images in a batch.
    Training always uses ordinary batch statistics.
    """

    def __init__(self, channels: int, mode: str = "instance") -> None:
        super().__init__(channels)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.mode == "eval":
            return super().forward(x)
        return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)
