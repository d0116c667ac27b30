"""ResNet-18 for 32x32 inputs (He et al., CVPR 2016, "Deep Residual Learning for Image Recognition").

The CIFAR variant used across the robustness literature: a 3x3 stride-1 stem without max-pooling, four
stages of two BasicBlocks, base width ``64 * width``.
"""

from __future__ import annotations

import torch
from torch import nn

from regcollide.models.normalize import Normalize, default_stats, scaled
from regcollide.models.registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: float = 1.0, blocks=(2, 2, 2, 2)):
        super().__init__()
        self.normalize = Normalize(*default_stats(in_chans))
        planes = [scaled(64 * 2**i, width) for i in range(4)]
        self.stem = nn.Sequential(nn.Conv2d(in_chans, planes[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(planes[0]), nn.ReLU())
        stages, in_planes = [], planes[0]
        for i, (p, n) in enumerate(zip(planes, blocks)):
            for j in range(n):
                stages.append(BasicBlock(in_planes, p, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = p
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        out = self.layers(self.stem(self.normalize(x)))
        return self.fc(self.pool(out).flatten(1))


@register_model("resnet18-cifar")
def resnet18_cifar(num_classes: int = 10, in_chans: int = 3, img_size: int = 32, width: float = 1.0) -> nn.Module:
    return ResNetCifar(num_classes, in_chans, width)
