"""Gumbel shrinkage (thesis Eq. 3.2): exact top-k in the forward pass, full softmax gradient back."""

from __future__ import annotations

import torch


def gumbel_shrinkage(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Sparse attention weights over memory items.

    Forward: the softmax restricted to the k largest logits and renormalised, every other weight
    exactly zero. Backward: the gradient of the full softmax (straight-through estimator),
    ``sg(hs(w) - softmax(w)) + softmax(w)``. Ties at the k-th value keep exactly k items.
    """
    soft = torch.softmax(logits, dim=-1)
    k = min(k, logits.shape[-1])
    top_values, top_index = soft.topk(k, dim=-1)
    hard = torch.zeros_like(soft).scatter(-1, top_index, top_values)
    hard = hard / hard.sum(dim=-1, keepdim=True)
    return (hard - soft).detach() + soft
