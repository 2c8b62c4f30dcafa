"""Scoring in torch: raw discriminator logits and reconstructions, batch-invariant by construction."""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

from model.network import SquidGenerator
from model.network.ensemble import Judge


@torch.no_grad()
def score_images(
    generator: SquidGenerator,
    discriminator: Judge,
    images: NDArray[np.float32],
    batch_size: int = 64,
    norm: str | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float32]]:
    """(N, H, W) preprocessed images -> raw scores (N,) and reconstructions (N, H, W).

    The raw score is D(Gs(E(I))) (thesis Eq. 3.5), or D(I) when the config says ``score_on="input"``;
    for an ensemble, the members' mean logit.

    Both networks run in eval mode, so BatchNorm uses running statistics in the generator and the
    chosen per-image (``instance``) or running (``eval``) statistics in the discriminator.
    """
    was_training = generator.training, discriminator.training
    generator.eval()
    discriminator.eval()
    previous = None
    if norm is not None:
        previous = _score_norm(discriminator)
        discriminator.set_score_norm(norm)
    scores, recons = [], []
    try:
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))[:, None]
            recon = generator.reconstruct(batch)
            judged = batch if generator.config.score_on == "input" else recon
            scores.append(discriminator(judged).double().numpy())
            recons.append(recon[:, 0].numpy())
    finally:
        generator.train(was_training[0])
        discriminator.train(was_training[1])
        if previous is not None:
            discriminator.set_score_norm(previous)
    if not scores:
        return np.empty(0), np.empty((0, *images.shape[1:]), np.float32)
    return np.concatenate(scores), np.concatenate(recons)


def _score_norm(discriminator: Judge) -> str:
    from model.network.blocks import ScoreNorm2d

    for module in discriminator.modules():
        if isinstance(module, ScoreNorm2d):
            return module.mode
    return "eval"
