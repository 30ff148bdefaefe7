"""A Vision Transformer whose patch embedding is a stack of 3x3 convs (Xiao et al. 2021).

"Early convolutions help transformers see better": the single p x p stride-p patchify conv becomes
log2(p) stacked 3x3 stride-2 convs (BN, ReLU) followed by a 1x1 conv to the embedding width. The
paper (Table 7) puts DCS on the second 3x3 conv of this stem, a stride-2 conv Eq. 12 admits.

Conv order (1-based): 1 ``stem.0.conv`` (3x3, stride 2), 2 ``stem.1.conv`` (3x3, stride 2), ...,
last ``stem_proj`` (1x1). ``width`` is the embedding width (192 = ViT-Tiny); the stem's channels grow
as width/8, width/4, ... up to width/2 before the projection.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = ["ConvStemViT"]


class _StemConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class _Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ConvStemViT(nn.Module):
    """ViT with a convolutional stem.

    Args:
        num_classes: output logits.
        in_channels: 3 for RGB, 1 for Fashion-MNIST.
        width: embedding width (192 = ViT-Tiny; 64 or 32 for CPU-scale runs); divisible by 8 and heads.
        image_size: input side in pixels (32 for CIFAR, 28 for Fashion-MNIST); sizes the position table.
        patch_size: a power of two >= 4; the stem has log2(patch_size) stride-2 convs.
        depth, heads, mlp_ratio: transformer depth, attention heads (None: width // 64, at least 1,
            64 channels per head as in ViT), MLP expansion (ViT-Tiny: 12, 3, 4).

    Shape: ``[B, in_channels, image_size, image_size]`` in [0, 1] -> logits ``[B, num_classes]``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 192,
        image_size: int = 32,
        patch_size: int = 4,
        depth: int = 12,
        heads: int | None = None,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        heads = max(1, width // 64) if heads is None else heads
        stages = int(math.log2(patch_size)) if patch_size > 0 else 0
        if patch_size < 4 or 2**stages != patch_size:
            raise ConfigError(
                f"patch_size must be a power of two >= 4 (two 3x3 stem convs), got {patch_size}"
            )
        if width % 8 or width % heads:
            raise ConfigError(f"width={width} must be divisible by 8 and by heads={heads}")
        grid = math.ceil(image_size / patch_size)
        channels = [width // 2 ** (stages - i) for i in range(stages)]
        self.stem = nn.Sequential(
            *[_StemConv(in_channels if i == 0 else channels[i - 1], c) for i, c in enumerate(channels)]
        )
        self.stem_proj = nn.Conv2d(channels[-1], width, 1)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid + 1, width) * 0.02)
        self.blocks = nn.Sequential(*[_Block(width, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem_proj(self.stem(x)).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        tokens = self.norm(self.blocks(tokens))
        return self.head(tokens[:, 0])
