"""The pure-PyTorch implementation of the DCS op: forward, grad-input, grad-weight.

Only the n drawn taps are computed. Each tap (ky, kx) reads one strided window of the input; the
windows are gathered side by side into a ``cols`` matrix ``[M = B*H_out*W_out, n*C_in/groups]`` and
one GEMM per group against the tapped weight ``[n*C_in/groups, C_out/groups]`` gives the output.
Working in the channels-last view makes both the gather and the GEMM contiguous and lets one GEMM
cover the whole batch (``M`` rows) instead of one small GEMM per image; a channels_last input
takes that path with no conversion, an NCHW one converts inside the gather it does anyway.

Padding is never materialised: each tap's window is clipped to the part that lies inside the input
and the rest of ``cols`` stays zero. Backward mirrors this: ``grad_cols = grad_out @ W_taps^T`` is
scatter-added window by window into the input gradient, and the weight gradient is one GEMM
``cols^T @ grad_out`` whose K dimension is the whole batch, scattered into the n tapped positions of a
zero ``[C_out, C_in/groups, k, k]`` gradient.

Depthwise layers (one input channel per group and per output) skip the GEMM: a GEMM with K = n is
all overhead, so they accumulate ``window * w_tap`` elementwise instead.

This file is the CPU path and the reference for other backends; it is also correct on CUDA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["TapWindow", "dcs_forward", "dcs_grad_input", "dcs_grad_weight", "output_hw", "tap_windows"]

Pads = tuple[int, int, int, int]  # (left, right, top, bottom)


@dataclass(frozen=True)
class TapWindow:
    """Where tap ``index`` (its position in the taps tensor) reads the input and writes the output."""

    index: int
    in_rows: slice
    in_cols: slice
    out_rows: slice
    out_cols: slice

    def empty(self) -> bool:
        return self.out_rows.start >= self.out_rows.stop or self.out_cols.start >= self.out_cols.stop


def output_hw(h: int, w: int, k: int, stride: tuple[int, int], padding: Pads, dilation: tuple[int, int]):
    left, right, top, bottom = padding
    h_out = (h + top + bottom - dilation[0] * (k - 1) - 1) // stride[0] + 1
    w_out = (w + left + right - dilation[1] * (k - 1) - 1) // stride[1] + 1
    return h_out, w_out


def _axis_window(offset: int, size: int, size_out: int, step: int) -> tuple[slice, slice]:
    """Output positions i whose input position ``offset + i*step`` lies in ``[0, size)``, both as slices."""
    first = 0 if offset >= 0 else (-offset + step - 1) // step
    last = 0 if offset > size - 1 else min(size_out, (size - 1 - offset) // step + 1)
    last = max(last, first)
    start = offset + first * step
    stop = offset + (last - 1) * step + 1 if last > first else start
    return slice(start, stop, step), slice(first, last)


def tap_windows(
    taps: list[int], k: int, hw: tuple[int, int], hw_out: tuple[int, int], stride, padding: Pads, dilation
) -> tuple[list[TapWindow], bool]:
    """The clipped input/output windows of every tap, and whether any window misses part of the output."""
    left, _, top, _ = padding
    windows, partial = [], False
    for index, tap in enumerate(taps):
        ky, kx = divmod(tap, k)
        in_rows, out_rows = _axis_window(ky * dilation[0] - top, hw[0], hw_out[0], stride[0])
        in_cols, out_cols = _axis_window(kx * dilation[1] - left, hw[1], hw_out[1], stride[1])
        window = TapWindow(index, in_rows, in_cols, out_rows, out_cols)
        partial |= (out_rows.stop - out_rows.start, out_cols.stop - out_cols.start) != hw_out
        windows.append(window)
    return windows, partial


def _is_depthwise(weight_shape: Sequence[int], groups: int) -> bool:
    """One input channel per group and one output channel per group."""
    return weight_shape[1] == 1 and weight_shape[0] == groups


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return (
        torch.channels_last
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        else torch.contiguous_format
    )


def _gather_cols(
    x: torch.Tensor, windows: list[TapWindow], partial: bool, groups: int, hw_out
) -> torch.Tensor:
    """NHWC-side gather: ``cols[g, b, i, j, t, c]`` = channel ``g*Cg + c`` under tap t at output (i, j).

    Zero where the tap falls in the padding.
    """
    b, c = x.shape[0], x.shape[1]
    cg = c // groups
    xl = x.permute(0, 2, 3, 1)  # [B, H, W, C] view; contiguous when x is channels_last
    alloc = torch.zeros if partial else torch.empty
    cols = alloc((groups, b, hw_out[0], hw_out[1], len(windows), cg), dtype=x.dtype, device=x.device)
    for w in windows:
        if w.empty():
            continue
        src = xl[:, w.in_rows, w.in_cols, :]
        dst = cols[:, :, w.out_rows, w.out_cols, w.index, :]
        dst.copy_(src.unflatten(-1, (groups, cg)).permute(3, 0, 1, 2, 4))
    return cols


def _tapped_weight(weight: torch.Tensor, taps: torch.Tensor, groups: int) -> torch.Tensor:
    """``[groups, n*Cg, Og]`` with rows ordered (tap, input channel), matching ``cols``."""
    c_out, cg = weight.shape[:2]
    wt = weight.flatten(2).index_select(2, taps)  # [C_out, Cg, n]
    return wt.view(groups, c_out // groups, cg, -1).permute(0, 3, 2, 1).reshape(groups, -1, c_out // groups)


def _to_format(t_nhwc: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """A ``[B, H, W, C]`` tensor as ``[B, C, H, W]`` in the requested memory format."""
    return t_nhwc.permute(0, 3, 1, 2).contiguous(memory_format=fmt)  # a no-op when already there


def _gather_cols_nchw(x: torch.Tensor, windows: list[TapWindow], partial: bool, groups: int, hw_out):
    """NCHW-side gather: ``cols[b, g, t, c, i, j]`` = channel ``g*Cg + c`` under tap t at output (i, j).

    Zero where the tap falls in the padding.
    """
    b, c = x.shape[0], x.shape[1]
    alloc = torch.zeros if partial else torch.empty
    cols = alloc((b, groups, len(windows), c // groups, *hw_out), dtype=x.dtype, device=x.device)
    for w in windows:
        if not w.empty():
            dst = cols[:, :, w.index, :, w.out_rows, w.out_cols]
            dst.copy_(x[:, :, w.in_rows, w.in_cols].unflatten(1, (groups, -1)))
    return cols


def _batched(weight_groups: torch.Tensor, batch: int) -> torch.Tensor:
    """``[g, R, C]`` -> ``[batch*g, R, C]``: a stride-0 view for g == 1 (bmm reads it without a copy);
    for g > 1 the batch and group dims cannot merge into one stride, so reshape copies (small: weights)."""
    g = weight_groups.shape[0]
    return (
        weight_groups.unsqueeze(0).expand(batch, -1, -1, -1).reshape(batch * g, *weight_groups.shape[1:])
        if g > 1
        else weight_groups.expand(batch, -1, -1)
    )


def dcs_forward(x, weight, bias, taps, stride, padding: Pads, dilation, groups: int) -> torch.Tensor:
    """Output ``[B, C_out, H_out, W_out]`` in the memory format of ``x``."""
    b, _, h, w = x.shape
    c_out, _, k, _ = weight.shape
    hw_out = output_hw(h, w, k, stride, padding, dilation)
    windows, partial = tap_windows(taps.tolist(), k, (h, w), hw_out, stride, padding, dilation)
    fmt = _memory_format(x)
    if _is_depthwise(weight.shape, groups):
        out = torch.empty((b, c_out, *hw_out), dtype=x.dtype, device=x.device, memory_format=fmt).zero_()
        wt = weight.flatten(1).index_select(1, taps)  # [C, n]
        for win in windows:
            if not win.empty():
                out[:, :, win.out_rows, win.out_cols].addcmul_(
                    x[:, :, win.in_rows, win.in_cols], wt[:, win.index].view(1, -1, 1, 1)
                )
        return out if bias is None else out.add_(bias.view(1, -1, 1, 1))
    wt = _tapped_weight(weight, taps, groups)  # [g, n*Cg, Og]
    if fmt == torch.contiguous_format:
        # Per image and group: out[Og, HW] = W_taps^T [Og, n*Cg] @ cols [n*Cg, HW]; lands in NCHW.
        cols = _gather_cols_nchw(x, windows, partial, groups, hw_out).view(
            b * groups, -1, hw_out[0] * hw_out[1]
        )
        out = torch.bmm(_batched(wt.transpose(1, 2), b), cols).view(b, c_out, *hw_out)
        return out if bias is None else out.add_(bias.view(1, -1, 1, 1))
    # channels_last: one GEMM per group over all B*H_out*W_out rows; lands in NHWC.
    m = b * hw_out[0] * hw_out[1]
    cols = _gather_cols(x, windows, partial, groups, hw_out).view(groups, m, -1)
    if groups == 1:
        out = cols[0] @ wt[0] if bias is None else torch.addmm(bias, cols[0], wt[0])
        return _to_format(out.view(b, *hw_out, c_out), fmt)
    out = torch.bmm(cols, wt)  # [g, M, Og]
    if bias is not None:
        out += bias.view(groups, 1, -1)
    return _to_format(out.view(groups, b, *hw_out, -1).permute(1, 2, 3, 0, 4).reshape(b, *hw_out, c_out), fmt)


def _grad_out_groups(grad_out: torch.Tensor, groups: int) -> torch.Tensor:
    """``grad_out`` as ``[groups, M, Og]`` (a view when channels_last and groups == 1)."""
    b, c_out, ho, wo = grad_out.shape
    gl = grad_out.permute(0, 2, 3, 1)
    if groups == 1:
        return gl.reshape(1, b * ho * wo, c_out)
    return gl.unflatten(-1, (groups, -1)).permute(3, 0, 1, 2, 4).reshape(groups, b * ho * wo, -1)


def dcs_grad_input(grad_out, x_shape, x_format, weight, taps, stride, padding: Pads, dilation, groups: int):
    """Gradient of the input, ``[B, C_in, H, W]`` in ``x_format``."""
    b, c_in, h, w = x_shape
    k = weight.shape[-1]
    hw_out = tuple(grad_out.shape[-2:])
    windows, _ = tap_windows(taps.tolist(), k, (h, w), hw_out, stride, padding, dilation)
    if _is_depthwise(weight.shape, groups):
        gx = torch.empty(
            x_shape, dtype=grad_out.dtype, device=grad_out.device, memory_format=x_format
        ).zero_()
        wt = weight.flatten(1).index_select(1, taps)
        for win in windows:
            if not win.empty():
                gx[:, :, win.in_rows, win.in_cols].addcmul_(
                    grad_out[:, :, win.out_rows, win.out_cols], wt[:, win.index].view(1, -1, 1, 1)
                )
        return gx
    wt = _tapped_weight(weight, taps, groups)  # [g, n*Cg, Og]
    cg, n = c_in // groups, len(windows)
    if x_format == torch.contiguous_format:
        go = grad_out.contiguous().view(b * groups, -1, hw_out[0] * hw_out[1])
        gcols = torch.bmm(_batched(wt, b), go).view(b, groups, n, cg, *hw_out)
        gx = torch.zeros(x_shape, dtype=grad_out.dtype, device=grad_out.device)
        gxg = gx.view(b, groups, cg, h, w)
        for win in windows:
            if not win.empty():
                gxg[:, :, :, win.in_rows, win.in_cols].add_(
                    gcols[:, :, win.index, :, win.out_rows, win.out_cols]
                )
        return gx
    gcols = torch.bmm(_grad_out_groups(grad_out, groups), wt.transpose(1, 2))  # [g, M, n*Cg]
    gcols = gcols.view(groups, b, *hw_out, n, cg)
    gx = torch.zeros((b, h, w, c_in), dtype=grad_out.dtype, device=grad_out.device)
    gxg = gx.view(b, h, w, groups, cg)
    for win in windows:
        if not win.empty():
            src = gcols[:, :, win.out_rows, win.out_cols, win.index, :].permute(1, 2, 3, 0, 4)
            gxg[:, win.in_rows, win.in_cols].add_(src)
    return _to_format(gx, x_format)


def dcs_grad_weight(grad_out, x, weight_shape, taps, stride, padding: Pads, dilation, groups: int):
    """Gradient of the full weight ``[C_out, C_in/groups, k, k]``; zero off the taps."""
    c_out, cg, k, _ = weight_shape
    b, _, h, w = x.shape
    hw_out = tuple(grad_out.shape[-2:])
    windows, partial = tap_windows(taps.tolist(), k, (h, w), hw_out, stride, padding, dilation)
    n = len(windows)
    grad_weight = torch.zeros(weight_shape, dtype=grad_out.dtype, device=grad_out.device)
    gw = grad_weight.view(c_out, cg, k * k)  # tap-indexed view of the result
    if _is_depthwise(weight_shape, groups):
        for win in windows:
            if not win.empty():
                prod = grad_out[:, :, win.out_rows, win.out_cols] * x[:, :, win.in_rows, win.in_cols]
                gw[:, 0, taps[win.index]] = prod.sum((0, 2, 3))
        return grad_weight
    if _memory_format(x) == torch.contiguous_format:
        # Per image and group [Og, HW] @ [HW, n*Cg], summed over the batch.
        cols = _gather_cols_nchw(x, windows, partial, groups, hw_out).view(
            b * groups, -1, hw_out[0] * hw_out[1]
        )
        go = grad_out.contiguous().view(b * groups, -1, hw_out[0] * hw_out[1])
        gwt = torch.bmm(go, cols.transpose(1, 2)).view(b, groups, -1, n * cg).sum(0)  # [g, Og, n*Cg]
        gwt = gwt.view(groups, -1, n, cg).permute(0, 1, 3, 2).reshape(c_out, cg, n)
    else:
        cols = _gather_cols(x, windows, partial, groups, hw_out).view(groups, b * hw_out[0] * hw_out[1], -1)
        gwt = torch.bmm(cols.transpose(1, 2), _grad_out_groups(grad_out, groups))  # [g, n*Cg, Og]
        gwt = gwt.view(groups, n, cg, -1).permute(0, 3, 2, 1).reshape(c_out, cg, n)
    gw.index_copy_(2, taps, gwt)
    return grad_weight
