"""Encoder, in-painting block, student and teacher generators (thesis Tables 3.1 and 3.2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model.config import SquidConfig
from model.network.blocks import UpStage, conv_stage
from model.network.inpaint import InpaintingBlock
from model.network.memory import MemoryMatrix
from model.network.patches import merge_patches, split_patches


@dataclass
class SquidOutput:
    """What one forward pass gives the training loop."""

    reconstruction: torch.Tensor
    teacher_reconstruction: torch.Tensor | None
    student_features: list[torch.Tensor]
    teacher_features: list[torch.Tensor]


class Encoder(nn.Module):
    """Per-patch encoder: each stage halves the resolution (64 -> 32 -> 16 -> 8 -> 4 at 128 px, 2x2)."""

    def __init__(self, channels: tuple[int, ...], convs: int) -> None:
        super().__init__()
        ins = (1, *channels[:-1])
        self.stages = nn.ModuleList(
            conv_stage(i, o, convs, stride=2) for i, o in zip(ins, channels, strict=True)
        )

    def forward(self, patches: torch.Tensor) -> list[torch.Tensor]:
        features = []
        x = patches
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class Generator(nn.Module):
    """Decoder shared by student and teacher; the student adds memory matrices at skip levels.

    The first ``skip_levels`` stages run per patch with encoder skips (and, for the student,
    memory matrices); then patches are merged and the remaining stages run on the whole image.
    """

    def __init__(self, config: SquidConfig, with_memory: bool) -> None:
        super().__init__()
        enc = config.encoder_channels
        self.grid = config.grid
        self.skip_levels = config.decoder_skip_levels
        outs = (*reversed(enc[:-1]), enc[0])
        ins = (enc[-1], *outs[:-1])
        self.stages = nn.ModuleList()
        self.memories = nn.ModuleList()
        size = config.bottleneck_size
        for level, (i, o) in enumerate(zip(ins, outs, strict=True)):
            skip = enc[-2 - level] if level < self.skip_levels else 0
            self.stages.append(UpStage(i, skip, o, config.convs_per_stage))
            size *= 2
            if with_memory and level < self.skip_levels:
                self.memories.append(
                    MemoryMatrix(
                        o,
                        size,
                        config.decoder_memory_slots,
                        config.decoder_memory_windows,
                        config.top_k,
                        config.decoder_memory_rho,
                    )
                )
            else:
                self.memories.append(nn.Identity())
        self.head = nn.Conv2d(outs[-1], 1, 1)

    def forward(
        self, bottleneck: torch.Tensor, skips: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """bottleneck (B*P, C, s, s), skips from shallow to deep (per patch) -> image, level features."""
        x = bottleneck
        levels = []
        for level, (stage, memory) in enumerate(zip(self.stages, self.memories, strict=True)):
            if level == self.skip_levels:
                x = merge_patches(x, self.grid)
            skip = skips[-2 - level] if level < self.skip_levels else None
            x = memory(stage(x, skip))
            levels.append(x)
        return torch.sigmoid(self.head(x)), levels


class SquidGenerator(nn.Module):
    """E, the in-painting block, Gs and Gt. ``forward`` runs all of them; ``reconstruct`` the E->Gs path."""

    def __init__(self, config: SquidConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.encoder_channels, config.convs_per_stage)
        self.inpaint = InpaintingBlock(
            channels=config.encoder_channels[-1],
            bottleneck=config.bottleneck_channels,
            size=config.bottleneck_size,
            grid=config.grid,
            queue_items=config.queue_items,
            top_k=config.top_k,
            heads=config.attention_heads,
            mlp_ratio=config.mlp_ratio,
            rho=config.shortcut_rho,
            position_code=config.position_code,
        )
        self.student = Generator(config, with_memory=True)
        self.teacher = Generator(config, with_memory=False)

    def forward(self, images: torch.Tensor, with_teacher: bool = True) -> SquidOutput:
        features = self.encoder(split_patches(images, self.config.grid))
        inpainted = self.inpaint(features[-1])
        recon, student_levels = self.student(inpainted, features)
        if not with_teacher:
            return SquidOutput(recon, None, student_levels, [])
        detached = [f.detach() for f in features]
        teacher_recon, teacher_levels = self.teacher(detached[-1], detached)
        return SquidOutput(recon, teacher_recon, student_levels, teacher_levels)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """The inference chain Gs(E(I)): what scoring and export use."""
        return self.forward(images, with_teacher=False).reconstruction

    def commit_to_queue(self) -> None:
        self.inpaint.commit_to_queue()
