"""Test oracle: the masked dense convolution (the DCS definition), written with plain ``F.conv2d``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def tap_mask(k: int, taps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[k, k]`` mask with ones at ``taps`` (row-major positions)."""
    return torch.zeros(k * k, dtype=dtype).index_fill_(0, taps.cpu(), 1.0).view(k, k)


def masked_conv2d(x, weight, bias, taps, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """``F.conv2d(x, weight * M, ...)``; ``padding`` may be a 4-tuple (left, right, top, bottom)."""
    if isinstance(padding, tuple) and len(padding) == 4:
        x, padding = F.pad(x, padding), 0
    mask = tap_mask(weight.shape[-1], taps, weight.dtype).to(weight.device)
    return F.conv2d(x, weight * mask, bias, stride, padding, dilation, groups)
