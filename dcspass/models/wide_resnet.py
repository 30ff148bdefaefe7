"""WideResNet-34-10 (Zagoruyko & Komodakis 2016), the pre-activation variant used in adversarial training.

Depth 34 gives (34 - 4) / 6 = 5 blocks per stage; three stages at 16*w, 32*w, 64*w channels with
strides 1, 2, 2 after a 3x3 stem of 16 channels. Conv order (1-based): 1 ``conv1``, 2
``block1.layer.0.conv1``, 3 ``block1.layer.0.conv2``, 4 ``block1.layer.0.shortcut``, ... The first
stride-2 3x3 conv is ``block2.layer.0.conv1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = ["WideResNet"]


class _WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3, 1x1 projection when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        skip = x if self.shortcut is None else self.shortcut(pre)
        return out + skip


class _Stage(nn.Module):
    def __init__(self, blocks: int, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                _WideBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1)
                for i in range(blocks)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-width for 32 x 32 inputs.

    Args:
        num_classes: output logits.
        in_channels: 3 for RGB, 1 for Fashion-MNIST.
        width: the widen factor (10 for WRN-34-10; 1 or 2 for CPU-scale runs).
        depth: 6 * blocks + 4 (34 by default).

    Shape: ``[B, in_channels, H, W]`` in [0, 1] -> logits ``[B, num_classes]``.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 10, depth: int = 34) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ConfigError(f"WideResNet depth must be 6 * blocks + 4 (e.g. 28, 34), got depth={depth}")
        blocks = (depth - 4) // 6
        channels = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _Stage(blocks, channels[0], channels[1], 1)
        self.block2 = _Stage(blocks, channels[1], channels[2], 2)
        self.block3 = _Stage(blocks, channels[2], channels[3], 2)
        self.bn = nn.BatchNorm2d(channels[3])
        self.fc = nn.Linear(channels[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))
