"""SQUID hyper-parameters as one dataclass that travels with the weights, plus named presets.

Every number the thesis fixes (chapter 3, section 4.1.5) is a field here, so an ablation is a config
change, never a code change. Presets are small builder functions, timm style.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SCORE_NORMS = ("instance", "eval")
SCORE_TARGETS = ("reconstruction", "input")


@dataclass(frozen=True)
class SquidConfig:
    """Architecture, method and optimisation settings of one SQUID model."""

    name: str = "thesis"
    image_size: int = 128
    intensity: str = "minmax"
    grid: int = 2
    encoder_channels: tuple[int, ...] = (32, 64, 128, 256)
    convs_per_stage: int = 2
    # In-painting block.
    bottleneck_channels: int = 128
    attention_heads: int = 8
    mlp_ratio: float = 0.25
    position_code: bool = True
    queue_items: int = 200
    top_k: int = 5
    shortcut_rho: float = 0.95
    # Student generator memory matrices (MemAE style) at the per-patch decoder levels.
    decoder_memory_slots: int = 200
    decoder_memory_windows: int = 2
    decoder_memory_rho: float = 0.95
    decoder_skip_levels: int = 2
    # Discriminator.
    discriminator_channels: tuple[int, ...] = (16, 32, 64, 128, 128)
    score_norm: str = "instance"
    # What D judges at inference: the in-painted reconstruction (thesis Eq. 3.5) or the input itself
    # (a documented alternative, measured in docs/experiments.md; training is the same either way).
    score_on: str = "reconstruction"
    d_input_blur: float = 0.0
    # Losses (Eq. 3.6-3.12).
    lambda_t: float = 0.01
    lambda_s: float = 10.0
    lambda_dist: float = 0.001
    lambda_gen: float = 0.005
    lambda_dis: float = 0.005
    # Optimisation (section 4.1.5).
    lr: float = 1e-4
    lr_min: float = 2e-5
    weight_decay: float = 1e-5
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 16
    generator_every: int = 2
    # Augmentation: the thesis' geometry, plus optional intensity jitter of the normals.
    translate: float = 0.05
    scale_range: tuple[float, float] = (0.95, 1.05)
    gamma_range: tuple[float, float] = (1.0, 1.0)
    window_jitter: float = 0.0
    blur_sigma_max: float = 0.0
    noise_sigma_max: float = 0.0
    # Training recipe beyond the thesis (measured in docs/experiments.md; defaults = the thesis).
    ema_decay: float = 0.0
    d_mixed_batches: bool = False
    d_input_noise: float = 0.0
    d_lr_constant: bool = False
    schedule_stretch: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.grid <= 8:
            raise ValueError(f"grid must be in 1..8, got {self.grid}")
        if self.image_size % self.grid:
            raise ValueError(f"image_size {self.image_size} is not divisible by grid {self.grid}")
        down = 2 ** len(self.encoder_channels)
        if self.patch_size % down:
            raise ValueError(
                f"patch size {self.patch_size} cannot be halved {len(self.encoder_channels)} times"
            )
        if self.decoder_skip_levels >= len(self.encoder_channels):
            raise ValueError("decoder_skip_levels must leave at least one full-image level")
        if self.intensity not in ("minmax", "percentile", "equalize"):
            raise ValueError("intensity must be minmax, percentile or equalize (see model.preprocess)")
        if self.score_on not in SCORE_TARGETS:
            raise ValueError(f"score_on must be one of {SCORE_TARGETS}")
        if self.score_norm not in SCORE_NORMS:
            raise ValueError(f"score_norm must be one of {SCORE_NORMS}")
        if self.top_k < 1 or self.top_k > self.queue_items:
            raise ValueError("top_k must be in 1..queue_items")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("ema_decay must be in [0, 1)")
        if self.schedule_stretch < 1.0:
            raise ValueError("schedule_stretch must be >= 1")
        token = self.bottleneck_channels * self.bottleneck_size**2
        if token % self.attention_heads:
            raise ValueError(f"token size {token} is not divisible by {self.attention_heads} heads")

    @property
    def patch_size(self) -> int:
        return self.image_size // self.grid

    @property
    def bottleneck_size(self) -> int:
        return self.patch_size // 2 ** len(self.encoder_channels)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SquidConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def replace(self, **changes: Any) -> SquidConfig:
        return dataclasses.replace(self, **changes)


def thesis() -> SquidConfig:
    """The thesis settings: 128 px, 2x2 patches, Table 3.1-3.3 widths, section 4.1.5 optimisation."""
    return SquidConfig()


def lite() -> SquidConfig:
    """A CPU-friendly variant: half the widths, a 512-d token and single-conv stages."""
    return SquidConfig(
        name="lite",
        encoder_channels=(16, 32, 64, 128),
        convs_per_stage=1,
        bottleneck_channels=32,
        attention_heads=4,
        discriminator_channels=(16, 32, 64, 128, 128),
    )


def digit() -> SquidConfig:
    """DigitAnatomy: 96 px, a 3x3 grid of 32 px digit cells, 4x4 bottleneck (the reference digit config)."""
    return SquidConfig(
        name="digit",
        image_size=96,
        grid=3,
        encoder_channels=(16, 32, 64),
        convs_per_stage=1,
        bottleneck_channels=64,
        attention_heads=4,
        queue_items=100,
        decoder_memory_slots=100,
        decoder_skip_levels=1,
        discriminator_channels=(16, 32, 64, 64, 64),
        lambda_s=1.0,
        generator_every=1,
        lr_min=1e-6,
    )


PRESETS: dict[str, Callable[[], SquidConfig]] = {"thesis": thesis, "lite": lite, "digit": digit}


def preset(name: str) -> SquidConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
