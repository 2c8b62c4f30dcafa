"""A plain convolutional auto-encoder baseline (the paper's "AE"), scored by reconstruction error.

Same encoder and generator widths as SQUID, no memories, no in-painting, no discriminator, so a
comparison under one budget isolates what SQUID's parts add.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn
from tqdm import tqdm

from model.config import SquidConfig
from model.network.patches import split_patches
from model.network.squid import Encoder, Generator
from training.augment import random_affine
from training.metrics import roc_auc


class AutoEncoder(nn.Module):
    def __init__(self, config: SquidConfig) -> None:
        super().__init__()
        self.grid = config.grid
        self.encoder = Encoder(config.encoder_channels, config.convs_per_stage)
        self.decoder = Generator(config, with_memory=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.encoder(split_patches(images, self.grid))
        return self.decoder(features[-1], features)[0]


@dataclass
class BaselineResult:
    """The AE's selection AUC per epoch and, in ``state``, the weights of the best epoch."""

    val_auc: float
    best_epoch: int
    history: list[float]
    train_seconds: float
    state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "state"}


def save_autoencoder(result: BaselineResult, config: SquidConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": config.to_dict(), "state": result.state, **result.summary()}, path)


def load_autoencoder(path: Path) -> AutoEncoder:
    """The best-epoch AE written by ``squid baseline``, in eval mode."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"auto-encoder baseline not found: {path}")
    data = torch.load(path, map_location="cpu", weights_only=True)
    model = AutoEncoder(SquidConfig.from_dict(data["config"]))
    model.load_state_dict(data["state"])
    return model.eval()


@torch.no_grad()
def reconstruction_errors(model: AutoEncoder, images: NDArray[np.float32]) -> NDArray[np.float64]:
    model.eval()
    errors = []
    for start in range(0, len(images), 64):
        batch = torch.from_numpy(images[start : start + 64])[:, None]
        errors.append(((model(batch) - batch) ** 2).mean(dim=(1, 2, 3)).double().numpy())
    return np.concatenate(errors)


def train_autoencoder(
    config: SquidConfig,
    train: NDArray[np.float32],
    val_images: NDArray[np.float32],
    val_labels: NDArray[np.int64],
    epochs: int,
    seed: int = 0,
    progress: bool = True,
) -> BaselineResult:
    """Train with the SQUID optimiser settings; keep the epoch with the best AUC on the labelled
    images given (the validation split, or a target-domain selection set)."""
    torch.manual_seed(seed)
    model = AutoEncoder(config)
    opt = torch.optim.Adam(
        model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    data = torch.from_numpy(train)[:, None]
    rng = torch.Generator().manual_seed(seed)
    history: list[float] = []
    best_state: dict[str, torch.Tensor] = {}
    start = time.perf_counter()
    for _epoch in tqdm(range(epochs), desc="AE baseline", disable=not progress):
        model.train()
        order = torch.randperm(len(data), generator=rng)
        for i in range(0, len(order), config.batch_size):
            batch = random_affine(
                data[order[i : i + config.batch_size]], config.translate, config.scale_range, rng
            )
            loss = F.mse_loss(model(batch), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        history.append(roc_auc(val_labels, reconstruction_errors(model, val_images)))
        if history[-1] > max(history[:-1], default=-np.inf):
            best_state = copy.deepcopy(model.state_dict())
    best = int(np.argmax(history))
    return BaselineResult(history[best], best + 1, history, time.perf_counter() - start, best_state)
