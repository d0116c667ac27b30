"""Building blocks shared by the model zoo.

Inputs are images in [0, 1]; any normalization is a first module *inside* the model, so attack budgets
stay in pixel units and the Null-space search can fold the normalization into the first weight matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """Per-channel affine normalization ``(x - mean) / std`` with ``mean`` and ``std`` buffers of shape (C,)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}.")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {tuple(std)}.")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


class WithNormalize(nn.Module):
    """Prepends a :class:`Normalize` to a network that expects normalized inputs (timm, torchvision)."""

    def __init__(self, normalize: Normalize, net: nn.Module):
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, x: torch.Tensor):
        return self.net(self.normalize(x))


def default_stats(in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """MNIST statistics for grey inputs, CIFAR-10 statistics for RGB inputs."""
    if in_chans == 1:
        return MNIST_MEAN, MNIST_STD
    if in_chans == 3:
        return CIFAR_MEAN, CIFAR_STD
    return (0.5,) * in_chans, (0.5,) * in_chans


def scaled(channels: int, width: float, multiple: int = 1) -> int:
    """``channels * width`` rounded to a positive multiple of ``multiple``."""
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}.")
    return max(multiple, int(round(channels * width / multiple)) * multiple)
