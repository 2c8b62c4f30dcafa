"""The training checkpoint: one file with everything needed to score, resume or export a model."""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from model.calibration import Calibration
from model.config import SquidConfig
from model.network import Discriminator, SquidGenerator
from model.network.ensemble import DiscriminatorEnsemble, Judge

FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """Config, weights (memory queue and pointers included as buffers), calibration and provenance."""

    config: dict[str, Any]
    generator: dict[str, torch.Tensor]
    discriminator: dict[str, torch.Tensor]
    score_norm: str
    epoch: int
    epochs: int
    seed: int
    data: dict[str, Any]
    history: list[dict[str, Any]]
    package_version: str
    git_commit: str
    created: str
    calibration: dict[str, Any] | None = None
    threshold: dict[str, Any] | None = None
    validation: dict[str, Any] = field(default_factory=dict)
    train_seconds: float = 0.0
    optimizers: dict[str, Any] | None = None
    # Further discriminators of an ensemble (``squid ensemble``): weights, score_norm, seed, epoch.
    members: list[dict[str, Any]] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    def squid_config(self) -> SquidConfig:
        return SquidConfig.from_dict(self.config)

    def build(self) -> tuple[SquidGenerator, Judge]:
        """The networks in eval mode, each discriminator set to its selected score normalisation;
        with ``members``, all discriminators as one ensemble."""
        config = self.squid_config()
        generator = SquidGenerator(config)
        generator.load_state_dict(self.generator)
        discriminators = [
            _discriminator(config, weights, norm)
            for weights, norm in [(self.discriminator, self.score_norm)]
            + [(m["discriminator"], m["score_norm"]) for m in self.members]
        ]
        judge: Judge = DiscriminatorEnsemble(discriminators) if self.members else discriminators[0]
        return generator.eval(), judge.eval()

    def get_calibration(self) -> Calibration:
        if self.calibration is None:
            raise ValueError("checkpoint is not calibrated")
        return Calibration(**self.calibration)


def _discriminator(config: SquidConfig, weights: dict[str, torch.Tensor], norm: str) -> Discriminator:
    discriminator = Discriminator(config)
    discriminator.load_state_dict(weights)
    discriminator.set_score_norm(norm)
    return discriminator


def save(checkpoint: Checkpoint, path: Path) -> None:
    """Write atomically: a crash mid-write never leaves a truncated checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(asdict(checkpoint), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(path: Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint format {data.get('format_version')!r}")
    return Checkpoint(**data)
