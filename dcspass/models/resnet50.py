"""torchvision's ResNet-50 (ImageNet, 224 x 224), built without pretrained weights.

``width`` is torchvision's ``width_per_group`` (64 for the standard network; smaller for CPU-scale
runs): it sets the 3x3 bottleneck widths. The stem takes 1 or 3 input channels. With torchvision's
v1.5 layout the stride-2 conv of each downsampling block is the 3x3 ``layerN.0.conv2``.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

__all__ = ["resnet50"]


def resnet50(num_classes: int = 1000, in_channels: int = 3, width: int = 64) -> ResNet:
    """A randomly initialised torchvision ResNet-50 (``weights=None``); ``[B, C, H, W] -> [B, classes]``."""
    model = ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, width_per_group=width)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model
