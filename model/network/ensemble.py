"""Several discriminators judging together: the raw score is their mean logit.

Discriminators trained with different seeds disagree on which normal-looking details matter; their
mean logit ranks images more steadily than any one of them (measured: docs/experiments.md). The
generator is not ensembled: when the discriminators judge the input, it only supplies the
reconstruction that is shown.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from model.network.discriminator import Discriminator


class DiscriminatorEnsemble(nn.Module):
    """Mean logit of ``members``; each keeps the score normalisation it was selected with."""

    def __init__(self, members: Sequence[Discriminator]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one discriminator")
        self.members = nn.ModuleList(members)
        self._discriminators = list(members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B,) mean logits."""
        return torch.stack([member(images) for member in self._discriminators]).mean(0)

    def set_score_norm(self, mode: str) -> None:
        for member in self._discriminators:
            member.set_score_norm(mode)

    def discriminators(self) -> list[Discriminator]:
        return list(self._discriminators)


Judge = Discriminator | DiscriminatorEnsemble


def discriminators_of(judge: Judge) -> list[Discriminator]:
    """The single discriminators a judge is made of."""
    return judge.discriminators() if isinstance(judge, DiscriminatorEnsemble) else [judge]
