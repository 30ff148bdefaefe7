"""``DCSConv2d``: a k x k convolution that uses n randomly drawn taps at every forward."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import functional
from .errors import ConfigError
from .functional import normalize_padding, pair, same_padding
from .taps import sample_taps
from .validation import check_n, positive_int

__all__ = ["DCSConv2d", "DCSConv2dSame"]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class DCSConv2d(nn.Module):
    """Deformable Convolution with Stochasticity (DCS, Ma et al., ICML 2025).

    Owns a full ``[C_out, C_in/groups, k, k]`` weight like ``nn.Conv2d``; each forward draws n distinct
    taps (positions in the k x k window, row-major) uniformly from torch's RNG, in train and eval mode
    alike, and convolves with those taps only (``F.conv2d`` with the weight masked to the taps, at the
    cost of n taps). ``dcspass.frozen_taps``, ``excluding_taps`` and ``using_taps`` control the draw.

    Args:
        in_channels, out_channels, groups, bias, padding_mode: as ``nn.Conv2d``.
        kernel_size: k (an int, or a square pair).
        n: taps used per forward, ``1 <= n <= k*k``.
        stride, dilation: int or pair.
        padding: int, pair ``(pad_h, pad_w)``, 4-tuple ``(left, right, top, bottom)``, or ``"same"``
            (stride 1 only; the extra pixel of an even total goes right/bottom, as in PyTorch).

    Shape: ``[B, C_in, H, W] -> [B, C_out, H_out, W_out]``, as ``nn.Conv2d`` with the same arguments.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        n: int,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kh, kw = pair(kernel_size, "kernel_size")
        if kh != kw or kh < 1:
            raise ConfigError(
                f"DCSConv2d needs a square kernel k x k with k >= 1, got kernel_size={kernel_size!r}"
            )
        k = kh
        check_n(n, k)
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            positive_int(value, name)
        if in_channels % groups or out_channels % groups:
            raise ConfigError(
                f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}"
            )
        if padding_mode not in _PADDING_MODES:
            raise ConfigError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
        self.stride = pair(stride, "stride")
        self.dilation = pair(dilation, "dilation")
        if min(self.stride) < 1 or min(self.dilation) < 1:
            raise ConfigError(f"stride and dilation must be >= 1, got {stride!r}, {dilation!r}")
        if isinstance(padding, str):
            if padding != "same" or self.stride != (1, 1):
                raise ConfigError(
                    f"padding={padding!r}: only 'same' is a valid string, and only with stride 1 "
                    "(as nn.Conv2d); pass explicit padding otherwise"
                )
            padding = same_padding((k, k), self.dilation)
        self.padding: tuple[int, int, int, int] = normalize_padding(padding)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.n, self.padding_mode = k, n, padding_mode
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, k, k, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        # Tap control, set by the sampling context managers; plain attributes so compiled graphs
        # guard on them (None vs tensor) and recompile once per mode, not per draw.
        self.fixed_taps: torch.Tensor | None = None
        self.excluded_mask: torch.Tensor | None = None
        self.reset_parameters()

    @property
    def num_positions(self) -> int:
        """k*k, the number of positions taps are drawn from."""
        return self.kernel_size * self.kernel_size

    def reset_parameters(self) -> None:
        """``nn.Conv2d``'s initialisation over the whole k x k kernel."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def draw_taps(self) -> torch.Tensor:
        """A fresh draw of n taps (LongTensor ``[n]``), honouring any active exclusion."""
        return sample_taps(self.num_positions, self.n, self.excluded_mask, self.weight.device)

    def padding_for(self, x: torch.Tensor) -> tuple[int, int, int, int]:
        """Zero padding ``(left, right, top, bottom)`` for input ``x``; input-dependent in subclasses."""
        return self.padding

    def forward_with_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output and the taps it used (LongTensor ``[n]``)."""
        taps = self.fixed_taps if self.fixed_taps is not None else self.draw_taps()
        if self.fixed_taps is not None and torch.compiler.is_exporting():
            warnings.warn(
                f"torch.export inside frozen_taps/using_taps bakes the taps {self.fixed_taps.tolist()} of "
                f"{self!r} into the exported program: it will never resample. Export outside those "
                "contexts to keep the defense random (or ignore this if one fixed draw is what you deploy)",
                stacklevel=2,
            )
        return self.convolve(x, taps), taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_taps(x)[0]

    def convolve(self, x: torch.Tensor, taps: torch.Tensor, with_bias: bool = True) -> torch.Tensor:
        """This layer's convolution of ``x`` with the given taps, through ``dcspass.functional``.

        ``x``: ``[B, C_in, H, W]`` or ``[C_in, H, W]``; ``taps``: LongTensor of distinct positions in
        ``0..k*k-1``, any count (forward passes n; per-tap partial sums pass one). The geometry was
        checked when the layer was built, so only the input-dependent checks run.
        """
        padding = self.padding_for(x)
        if self.padding_mode != "zeros":
            x = F.pad(x, padding, mode=self.padding_mode)
            padding = (0, 0, 0, 0)
        bias = self.bias if with_bias else None
        return functional._dcs_conv2d_checked_geometry(
            x, self.weight, bias, taps, self.stride, padding, self.dilation, self.groups
        )

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, k={self.kernel_size}, n={self.n}, "
            f"stride={self.stride}, padding={self.padding}"
        )
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s


class DCSConv2dSame(DCSConv2d):
    """``DCSConv2d`` with TensorFlow "SAME" padding, computed from the input size at every forward.

    The SAME padding is that of a ``same_kernel`` (kh, kw) convolution with this layer's stride and
    dilation; ``padding`` (``(left, right, top, bottom)``) is added on top. ``transform`` uses this for
    timm's ``Conv2dSame``: ``same_kernel`` is the original kernel, ``padding`` the ring around it, so
    each output pixel sees the same input window as before plus the ring. Built directly with the
    defaults (``same_kernel=None``, ``padding=0``) it is a plain TF-"SAME" k x k DCS convolution.
    """

    def __init__(self, *args, same_kernel: int | Sequence[int] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.same_kernel = pair(self.kernel_size if same_kernel is None else same_kernel, "same_kernel")

    def padding_for(self, x: torch.Tensor) -> tuple[int, int, int, int]:
        pad_h = _tf_same_total(x.shape[-2], self.same_kernel[0], self.stride[0], self.dilation[0])
        pad_w = _tf_same_total(x.shape[-1], self.same_kernel[1], self.stride[1], self.dilation[1])
        left, right, top, bottom = self.padding
        return (pad_w // 2 + left, pad_w - pad_w // 2 + right, pad_h // 2 + top, pad_h - pad_h // 2 + bottom)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", tf_same_kernel={self.same_kernel}"


def _tf_same_total(size: int, k: int, stride: int, dilation: int) -> int:
    """Total TF-"SAME" padding along one axis: enough that the output has ceil(size / stride) pixels."""
    return max((-(-size // stride) - 1) * stride + (k - 1) * dilation + 1 - size, 0)
