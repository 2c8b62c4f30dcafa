"""The discriminator's input gradient written out as forward operations, so the ONNX graph has it.

onnxruntime runs no autograd, and the exporters cannot trace ``torch.autograd.grad``. The
discriminator is a plain chain (convolutions, per-image normalisation, leaky ReLUs, one linear head),
so its backward pass is short enough to spell out: each layer's adjoint below is the textbook
formula, and :func:`logit_and_input_gradient` agrees with autograd to float precision (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.network.blocks import ScoreNorm2d
from model.network.discriminator import Discriminator


def logit_and_input_gradient(
    discriminator: Discriminator, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, H, W) -> the (N,) logits and d logit / d image, (N, 1, H, W), in eval mode."""
    radius = discriminator.blur_radius
    x = F.conv2d(F.pad(images, [radius] * 4, mode="replicate"), discriminator.low_pass) if radius else images
    inputs: list[torch.Tensor] = []
    for layer in discriminator.features:
        inputs.append(x)
        x = layer(x) if not isinstance(layer, nn.LeakyReLU) else F.leaky_relu(x, layer.negative_slope)
    head = discriminator.head
    logits = head(x.flatten(1)).squeeze(1)
    grad = head.weight.reshape(1, *x.shape[1:]).expand_as(x)
    for layer, layer_input in zip(reversed(discriminator.features), reversed(inputs), strict=True):
        grad = _adjoint(layer, layer_input, grad)
    if radius:
        grad = _replicate_pad_adjoint(F.conv_transpose2d(grad, discriminator.low_pass), radius)
    return logits, grad


def _adjoint(layer: nn.Module, layer_input: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.LeakyReLU):
        return torch.where(layer_input > 0, grad, grad * layer.negative_slope)
    if isinstance(layer, nn.Conv2d):
        return _conv_adjoint(layer, layer_input, grad)
    if isinstance(layer, ScoreNorm2d):
        return _norm_adjoint(layer, layer_input, grad)
    raise TypeError(f"no adjoint for {type(layer).__name__}")


def _conv_adjoint(conv: nn.Conv2d, layer_input: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    stride, padding = conv.stride[0], int(conv.padding[0])
    kernel = conv.weight.shape[-1]
    produced = (grad.shape[-1] - 1) * stride - 2 * padding + kernel
    extra = layer_input.shape[-1] - produced
    return F.conv_transpose2d(grad, conv.weight, stride=stride, padding=padding, output_padding=extra)


def _norm_adjoint(norm: ScoreNorm2d, layer_input: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Instance mode: y = gamma * (a - mean) / std + beta with per-image, per-channel statistics."""
    gamma = norm.weight.reshape(1, -1, 1, 1)
    if norm.mode == "eval":
        assert norm.running_var is not None
        return grad * gamma / torch.sqrt(norm.running_var.reshape(1, -1, 1, 1) + norm.eps)
    mean = layer_input.mean((2, 3), keepdim=True)
    centred = layer_input - mean
    inv_std = torch.rsqrt((centred * centred).mean((2, 3), keepdim=True) + norm.eps)
    normalised = centred * inv_std
    g = grad * gamma
    return inv_std * (
        g - g.mean((2, 3), keepdim=True) - normalised * (g * normalised).mean((2, 3), keepdim=True)
    )


def _replicate_pad_adjoint(grad: torch.Tensor, radius: int) -> torch.Tensor:
    """Fold the gradient of replicated border pixels back onto the edge pixels they copied."""
    for dim in (-2, -1):
        first = grad.narrow(dim, 0, radius).sum(dim, keepdim=True)
        last = grad.narrow(dim, grad.shape[dim] - radius, radius).sum(dim, keepdim=True)
        inner = grad.narrow(dim, radius, grad.shape[dim] - 2 * radius)
        size = inner.shape[dim]
        grad = torch.cat(
            [
                inner.narrow(dim, 0, 1) + first,
                inner.narrow(dim, 1, size - 2),
                inner.narrow(dim, size - 1, 1) + last,
            ],
            dim,
        )
    return grad
