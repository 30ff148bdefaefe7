"""The DCS convolution as a function: ``dcs_conv2d(x, weight, bias, taps, ...)``.

Arguments are validated here, once, with messages that name the bad value; the op behind it
(``torch.ops.dcspass.dcs_conv2d``, registered in ``kernels.op``) trusts its inputs. ``DCSConv2d``
comes through here too, by ``_dcs_conv2d_checked_geometry``: it validated its geometry when it was
built and draws valid taps, so only the checks that depend on the input run at each forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .errors import ConfigError
from .kernels import op as _op
from .kernels.cpu import output_hw
from .taps import validate_taps

__all__ = ["dcs_conv2d", "normalize_padding", "pair", "same_padding"]


def pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(2, 1) -> (2, 1)``; anything else is a ``ConfigError`` naming ``name``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    raise ConfigError(f"{name} must be an int or a pair of ints, got {value!r}")


def normalize_padding(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
    """Padding as ``(left, right, top, bottom)``, the order of ``F.pad``.

    Accepts an int (all sides), a pair ``(pad_h, pad_w)`` as ``nn.Conv2d`` does, or a 4-tuple
    ``(left, right, top, bottom)`` so even kernels can keep output shapes.
    """
    if isinstance(padding, int) and not isinstance(padding, bool):
        pads = (padding,) * 4
    elif isinstance(padding, Sequence) and not isinstance(padding, str) and len(padding) == 2:
        pads = (padding[1], padding[1], padding[0], padding[0])
    elif isinstance(padding, Sequence) and not isinstance(padding, str) and len(padding) == 4:
        pads = tuple(padding)
    else:
        raise ConfigError(
            f"padding must be an int, a pair (pad_h, pad_w) or a 4-tuple (left, right, top, bottom), "
            f"got {padding!r}"
        )
    if not all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in pads):
        raise ConfigError(f"padding must be non-negative ints, got {padding!r}")
    return tuple(int(p) for p in pads)  # type: ignore[return-value]


def same_padding(kernel_size: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """PyTorch's stride-1 ``"same"`` padding as ``(left, right, top, bottom)``.

    The total per axis is ``dilation * (kernel - 1)``; the odd pixel of an odd total goes right/bottom.
    """
    total_h = dilation[0] * (kernel_size[0] - 1)
    total_w = dilation[1] * (kernel_size[1] - 1)
    return (total_w // 2, total_w - total_w // 2, total_h // 2, total_h - total_h // 2)


def dcs_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    taps: torch.Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Convolution with only the given taps of a k x k kernel.

    Equals ``F.conv2d(x, weight * M, bias, stride, padding, dilation, groups)`` where ``M`` is 1 at
    ``taps`` and 0 elsewhere, but costs n taps, not k*k.

    Args:
        x: ``[B, C_in, H, W]`` (or unbatched ``[C_in, H, W]``), any memory format.
        weight: ``[C_out, C_in/groups, k, k]``, the full square kernel.
        bias: ``[C_out]`` or None.
        taps: LongTensor ``[n]`` of distinct positions in ``0..k*k-1``, row-major.
        stride, dilation: int or pair.
        padding: int, pair ``(pad_h, pad_w)`` or 4-tuple ``(left, right, top, bottom)``; zeros.
        groups: as in ``F.conv2d``.

    Returns:
        ``[B, C_out, H_out, W_out]``, channels_last when ``x`` is channels_last.
    """
    stride_, dilation_ = pair(stride, "stride"), pair(dilation, "dilation")
    if min(stride_) < 1 or min(dilation_) < 1:
        raise ConfigError(f"stride and dilation must be >= 1, got stride={stride!r}, dilation={dilation!r}")
    return _dcs_conv2d_checked_geometry(
        x, weight, bias, taps, stride_, normalize_padding(padding), dilation_, groups, trusted_taps=False
    )


def _dcs_conv2d_checked_geometry(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    taps: torch.Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
    trusted_taps: bool = True,
) -> torch.Tensor:
    """``dcs_conv2d`` for a caller whose stride, dilation (pairs >= 1) and padding (left, right, top,
    bottom) are already normalised and checked, as ``DCSConv2d`` does when it is built.

    The shapes and dtypes of ``x``, ``weight`` and ``bias`` are still checked: they change from call to
    call and checking them costs no device sync. The taps are checked unless ``trusted_taps`` (taps drawn
    by ``sample_taps`` or set through ``using_taps`` are valid, and checking reads them back from the
    device).
    """
    x, weight, bias = _autocast(x, weight, bias)
    _check_conv_shapes(x, weight, bias, groups, padding, stride, dilation)
    if not trusted_taps and not torch.compiler.is_compiling():
        validate_taps(taps, weight.shape[-1] ** 2)
    unbatched = x.dim() == 3
    out = _op.conv2d(
        x.unsqueeze(0) if unbatched else x,
        weight,
        bias,
        taps,
        list(stride),
        list(padding),
        list(dilation),
        groups,
    )
    return out.squeeze(0) if unbatched else out


def _autocast(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Under autocast on ``x``'s device, the three in autocast's dtype, as ``F.conv2d`` would compute
    (the custom op has no autocast rule of its own, so it would see bf16 inputs beside fp32 weights)."""
    device = x.device.type
    if not x.is_floating_point() or not torch.is_autocast_enabled(device):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(device)
    return x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)


def _check_conv_shapes(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    groups: int,
    padding: tuple[int, int, int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> None:
    """Raise ``ConfigError`` unless the shapes make a valid square-kernel grouped convolution."""
    if x.dim() not in (3, 4):
        raise ConfigError(f"input must be [B, C, H, W] or [C, H, W], got shape {tuple(x.shape)}")
    if weight.dim() != 4 or weight.shape[-1] != weight.shape[-2]:
        raise ConfigError(f"weight must be [C_out, C_in/groups, k, k] (square), got {tuple(weight.shape)}")
    if not isinstance(groups, int) or groups < 1 or weight.shape[0] % groups:
        raise ConfigError(f"groups={groups!r} must be a positive int dividing C_out={weight.shape[0]}")
    c_in = x.shape[-3]
    if c_in != weight.shape[1] * groups:
        raise ConfigError(
            f"input has {c_in} channels but weight {tuple(weight.shape)} with groups={groups} expects "
            f"{weight.shape[1] * groups}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ConfigError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if x.dtype != weight.dtype or (bias is not None and bias.dtype != weight.dtype):
        raise ConfigError(
            f"input, weight and bias must share a dtype, got {x.dtype}, {weight.dtype}, "
            f"{None if bias is None else bias.dtype}"
        )
    k = weight.shape[-1]
    h_out, w_out = output_hw(x.shape[-2], x.shape[-1], k, stride, padding, dilation)
    if h_out < 1 or w_out < 1:
        raise ConfigError(
            f"input {tuple(x.shape[-2:])} with padding {padding} is smaller than the dilated kernel "
            f"({dilation[0] * (k - 1) + 1} x {dilation[1] * (k - 1) + 1})"
        )
