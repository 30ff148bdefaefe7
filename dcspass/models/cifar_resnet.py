"""ResNet-18 for 32 x 32 inputs (CIFAR; also 28 x 28 Fashion-MNIST): 3x3 stem, no max-pool.

Convs run in this order (1-based, as the paper counts layers): 1 ``conv1`` (stem), 2 ``layer1.0.conv1``,
3 ``layer1.0.conv2``, 4 ``layer1.1.conv1``, 5 ``layer1.1.conv2``, 6 ``layer2.0.conv1`` (the first stride-2
conv: the recipes' default DCS placement), 7 ``layer2.0.conv2``, 8 ``layer2.0.shortcut.0``, ...
The shortcut runs after the residual branch so that index 6 is ``layer2.0.conv1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock", "CifarResNet18"]


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN and a residual connection; a 1x1 projection when the shape changes."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 with a 3x3 stride-1 stem and no max-pool (the usual CIFAR variant).

    Args:
        num_classes: output logits.
        in_channels: 3 for RGB, 1 for Fashion-MNIST.
        width: channels of the first stage (64 in the paper; 16 or 8 for CPU-scale runs); the four
            stages use width, 2*width, 4*width, 8*width.

    Shape: ``[B, in_channels, H, W]`` in [0, 1] -> logits ``[B, num_classes]`` (any H, W >= 8).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        planes = [width, 2 * width, 4 * width, 8 * width]
        strides = [1, 2, 2, 2]
        in_planes = width
        for i, (p, s) in enumerate(zip(planes, strides, strict=True), start=1):
            self.add_module(f"layer{i}", nn.Sequential(BasicBlock(in_planes, p, s), BasicBlock(p, p, 1)))
            in_planes = p
        self.linear = nn.Linear(8 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)
