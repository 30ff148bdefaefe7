"""The paper's networks, written compactly, one file each, behind one registry.

``build_model(arch, num_classes, in_channels, width)`` is how training, checkpoints and recipes make
a network: the checkpoint's ``config`` holds exactly these arguments (plus ``model_options``), so
``dcspass.training.checkpoint.load_model`` can rebuild any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..validation import positive_int
from .cifar_resnet import CifarResNet18
from .resnet50 import resnet50
from .vit_convstem import ConvStemViT
from .wide_resnet import WideResNet

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_WIDTH",
    "CifarResNet18",
    "ConvStemViT",
    "WideResNet",
    "build_model",
    "resnet50",
]

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": CifarResNet18,
    "wrn34": WideResNet,
    "resnet50": resnet50,
    "vit_convstem": ConvStemViT,
}

# The paper-scale width of each architecture: stage-1 channels, widen factor, width_per_group, embed dim.
DEFAULT_WIDTH = {"resnet18": 64, "wrn34": 10, "resnet50": 64, "vit_convstem": 192}


def build_model(
    arch: str, num_classes: int, in_channels: int = 3, width: int | None = None, **options: Any
) -> nn.Module:
    """A freshly initialised network.

    Args:
        arch: one of ``ARCHITECTURES`` (``resnet18``, ``wrn34``, ``resnet50``, ``vit_convstem``).
        num_classes: logits per example.
        in_channels: 1 (Fashion-MNIST) or 3 (CIFAR, ImageNet).
        width: the width knob (see ``DEFAULT_WIDTH``); None means the paper's width.
        options: architecture-specific keywords (``image_size``, ``depth``, ``patch_size`` for the ViT).
    """
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown arch {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    positive_int(num_classes, "num_classes")
    positive_int(in_channels, "in_channels")
    width = positive_int(DEFAULT_WIDTH[arch] if width is None else width, "width")
    try:
        return ARCHITECTURES[arch](num_classes=num_classes, in_channels=in_channels, width=width, **options)
    except TypeError as exc:
        raise ConfigError(f"bad options for arch {arch!r}: {options} ({exc})") from exc
