"""Small networks for MNIST-sized inputs: Li et al.'s MLP, LeNet-5 and the TRADES small CNN."""

from __future__ import annotations

import torch
from torch import nn

from regcollide.models.normalize import scaled
from regcollide.models.registry import register_model


def _flat_features(features: nn.Module, in_chans: int, img_size: int) -> int:
    with torch.no_grad():
        return features(torch.zeros(1, in_chans, img_size, img_size)).flatten(1).shape[1]


@register_model("mlp")
def mlp(num_classes: int = 10, in_chans: int = 1, img_size: int = 28, width: float = 1.0) -> nn.Module:
    """Li, Zhang & Malik (NeurIPS 2019), "Approximate Feature Collisions in Neural Nets": the MNIST MLP.

    Two hidden ReLU layers of ``256 * width`` units; 784-256-256-10 at width 1. It takes raw [0, 1] pixels.
    """
    hidden = scaled(256, width)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_chans * img_size * img_size, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


class LeNet5(nn.Module):
    """LeCun et al. (Proc. IEEE 1998), "Gradient-Based Learning Applied to Document Recognition".

    The common modern variant: ReLU and max-pooling; channel and unit counts scale with ``width``.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: int = 28, width: float = 1.0):
        super().__init__()
        c1, c2 = scaled(6, width), scaled(16, width)
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = _flat_features(self.features, in_chans, img_size)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, scaled(120, width)), nn.ReLU(),
            nn.Linear(scaled(120, width), scaled(84, width)), nn.ReLU(),
            nn.Linear(scaled(84, width), num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        return self.classifier(self.features(x))


@register_model("lenet5")
def lenet5(num_classes: int = 10, in_chans: int = 1, img_size: int = 28, width: float = 1.0) -> nn.Module:
    return LeNet5(num_classes, in_chans, img_size, width)


class SmallCNN(nn.Module):
    """The small MNIST CNN of Zhang et al. (ICML 2019), "Theoretically Principled Trade-off between
    Robustness and Accuracy" (TRADES): four 3x3 convs (32, 32, 64, 64), two max-pools, FC 200-200.

    The reference code's dropout is left out so that evaluation is deterministic.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: int = 28, width: float = 1.0):
        super().__init__()
        c1, c2, fc = scaled(32, width), scaled(64, width), scaled(200, width)
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, c1, 3), nn.ReLU(), nn.Conv2d(c1, c1, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3), nn.ReLU(), nn.Conv2d(c2, c2, 3), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = _flat_features(self.features, in_chans, img_size)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, fc), nn.ReLU(), nn.Linear(fc, fc), nn.ReLU(), nn.Linear(fc, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        return self.classifier(self.features(x))


@register_model("cnn-small")
def cnn_small(num_classes: int = 10, in_chans: int = 1, img_size: int = 28, width: float = 1.0) -> nn.Module:
    return SmallCNN(num_classes, in_chans, img_size, width)
