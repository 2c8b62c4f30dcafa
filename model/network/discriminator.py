"""The discriminator (thesis Table 3.3): 5x5 stride-2 convs to a 4x4 map, then one logit."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import SquidConfig
from model.network.blocks import ScoreNorm2d


class Discriminator(nn.Module):
    """Judges whole reconstructions; its logit on Gs(E(I)) is SQUID's raw score (high = normal).

    With ``d_input_blur`` > 0 every input is first low-passed by a fixed Gaussian (part of the
    network, so training, export and serving see the same thing): the discriminator can no longer
    tell reconstructions from real films by their missing fine texture and has to judge anatomy.
    """

    low_pass: torch.Tensor

    def __init__(self, config: SquidConfig) -> None:
        super().__init__()
        self.blur_radius = math.ceil(3 * config.d_input_blur) if config.d_input_blur > 0 else 0
        if self.blur_radius:
            x = torch.arange(-self.blur_radius, self.blur_radius + 1, dtype=torch.float32)
            kernel = torch.exp(-(x**2) / (2 * config.d_input_blur**2))
            kernel = kernel / kernel.sum()
            self.register_buffer("low_pass", (kernel[:, None] * kernel[None, :])[None, None])
        layers: list[nn.Module] = []
        in_ch = 1
        for i, out_ch in enumerate(config.discriminator_channels):
            layers.append(nn.Conv2d(in_ch, out_ch, 5, 2, 2, bias=i == 0))
            if i > 0:
                layers.append(ScoreNorm2d(out_ch, config.score_norm))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        side = config.image_size // 2 ** len(config.discriminator_channels)
        self.head = nn.Linear(in_ch * side * side, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B,) logits."""
        return self.head(self.feature_map(images).flatten(1)).squeeze(1)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, C, s, s): the last feature map, which the linear head reads whole."""
        if self.blur_radius:
            images = F.conv2d(F.pad(images, [self.blur_radius] * 4, mode="replicate"), self.low_pass)
        return self.features(images)

    def set_score_norm(self, mode: str) -> None:
        """Switch how BatchNorm normalises at inference (see :class:`ScoreNorm2d`)."""
        for module in self.modules():
            if isinstance(module, ScoreNorm2d):
                module.mode = mode
