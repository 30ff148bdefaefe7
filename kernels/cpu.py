"""The pure-PyTorch implementation of the DCS op: forward, grad-input, grad-weight.

Only the n drawn taps are computed. Each tap (ky, kx) reads one strided window of the input; the
windows are gathered side by side, channels innermost, into a ``cols`` buffer whose rows are output
positions and whose columns are (tap, input channel) pairs, ``n*C_in/groups`` of them. Then each pass
is one GEMM against the tapped weight ``[n*C_in/groups, C_out/groups]`` with no transposing copy:

- channels_last input (the native layout): ``cols`` is one ``[M = B*H_out*W_out, n*Cg]`` matrix per
  group, the output ``cols @ W_taps`` is ``[M, C_out]``, which is the channels_last output itself,
  and ``grad_out`` of that layout is ``[M, C_out]`` as it stands, so grad-input
  (``grad_out @ W_taps^T``) and grad-weight (``cols^T @ grad_out``, K = the whole batch) read it in
  place.
- NCHW input: the gather transposes to channels innermost anyway (it reads only the tapped half of
  the input at stride 2), and per image the GEMM ``W_taps^T @ cols_b^T`` lands directly in NCHW
  (BLAS reads the transposed operand in place): one batched GEMM over images, no layout conversion
  of the input, the output, ``grad_out`` or the input gradient. Grad-input's GEMM there is
  ``W_taps @ grad_out_b``, whose result is already in NCHW order for the adds into the input gradient.
  Deep layers (many channels over few output positions) are the exception: their per-image weight
  gradients, summed over the batch, cost more than converting the output, ``grad_out`` and the input
  gradient once, so NCHW input there runs the channels_last passes (``_one_gemm``).

Padding is never materialised: each tap's window is clipped to the part that lies inside the input,
and only the rest of that tap's ``cols`` columns is zeroed (a thin border, not the whole buffer).
Backward mirrors this: ``grad_cols`` is added window by window into a zeroed input gradient
(measured: one memset plus n adds beats writing each stride phase once, because strided fills are
slow), and the weight gradient is written into the n tapped positions of a zero
``[C_out, C_in/groups, k, k]`` gradient, in the weight's own layout. The forward keeps ``cols`` for
the weight gradient while they are small (``keeps_cols``), so backward does not gather again.

Large batches go a few images at a time. glibc serves every allocation of 32 MiB or more (its largest
mmap threshold) with fresh pages, which the kernel maps and zero-fills one 4 KiB page fault at a
time on every call; when ``cols`` (or the input gradient's ``grad_cols``, the same size) would reach
``CHUNK_FROM_BYTES`` (32 MiB), each pass loops over chunks of about ``CHUNK_BYTES`` (4 MiB) of
images, with one buffer for their ``cols`` reused by every chunk, and writes each chunk's result
straight into its slice of the output or the input gradient (or adds it to the weight gradient).
Measured on 2 cores (fwd+bwd, batch 64): 1.2x-1.3x where that happens (stride 1 at CIFAR size, 32
MiB of ``cols``), but 0.95x-0.99x where it is not needed (8 and 21 MiB), so smaller buffers keep the
one-pass path. A chunked forward keeps no ``cols``: backward gathers them again, chunk by chunk.

Depthwise layers (one input channel per group and per output) skip the GEMM: a GEMM with K = n is
all overhead, so they accumulate ``window * w_tap`` elementwise instead.

This file is the CPU path and the reference for other backends; it is also correct on CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "CHUNK_BYTES",
    "CHUNK_FROM_BYTES",
    "KEEP_COLS_MAX_INPUTS",
    "TapWindow",
    "dcs_forward",
    "dcs_forward_keeping_cols",
    "dcs_grad_input",
    "dcs_grad_weight",
    "images_per_chunk",
    "keeps_cols",
    "output_hw",
    "tap_windows",
]

Pads = tuple[int, int, int, int]  # (left, right, top, bottom)

# The forward keeps its gathered cols for the weight gradient while they are at most this many times
# the input's size (n*H_out*W_out <= 2*H*W: any n <= 8 at stride 2, n <= 2 at stride 1); beyond
# that, backward gathers them again rather than hold n copies of the input.
KEEP_COLS_MAX_INPUTS = 2

# Gathered buffers (cols, grad_cols) of this many bytes or more are processed CHUNK_BYTES at a time.
CHUNK_FROM_BYTES = 32 << 20
CHUNK_BYTES = 4 << 20


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
) -> list[TapWindow]:
    """The clipped input/output windows of every tap (``_uncovered`` gives what each one misses)."""
    left, _, top, _ = padding
    windows = []
    for index, tap in enumerate(taps):
        ky, kx = divmod(tap, k)
        in_rows, out_rows = _axis_window(ky * dilation[0] - top, hw[0], hw_out[0], stride[0])
        in_cols, out_cols = _axis_window(kx * dilation[1] - left, hw[1], hw_out[1], stride[1])
        windows.append(TapWindow(index, in_rows, in_cols, out_rows, out_cols))
    return windows


def _is_depthwise(weight_shape: Sequence[int], groups: int) -> bool:
    """One input channel per group and one output channel per group."""
    return weight_shape[0] == groups and weight_shape[1] == 1


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return (
        torch.channels_last
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        else torch.contiguous_format
    )


def _one_gemm(
    x_shape: Sequence[int], weight_shape: Sequence[int], n: int, hw_out, groups: int, x_format
) -> bool:
    """Whether each pass runs as one GEMM per group over every output position of the batch (rows of
    ``cols``, channels innermost) rather than one GEMM per image in NCHW order.

    Always for channels_last input. For NCHW the per-image GEMMs read and write NCHW in place, but
    their weight gradient is a ``[C_out/g, n*C_in/g]`` partial per image, summed over the batch: when
    those partials outgrow what converting the output, ``grad_out`` and the input gradient between
    layouts costs (deep layers: many channels, few positions), the one-GEMM form wins. Measured on 2
    cores, batch 64: 2.6x faster at ResNet-18's ``layer4.0.conv1`` (256 -> 512, 4x4 out), 0.83x at
    ``layer3.0.conv1`` (128 -> 256, 8x8 out), which this rule leaves per image.
    """
    if x_format == torch.channels_last:
        return True
    c_in, h, w = x_shape[1:]
    per_image_partials = weight_shape[0] * n * (c_in // groups)
    conversions = 2 * (c_in * h * w + weight_shape[0] * hw_out[0] * hw_out[1])
    return per_image_partials > conversions


def _uncovered(window: TapWindow, hw_out: tuple[int, int]) -> list[tuple[slice, slice]]:
    """The (rows, cols) rectangles of the output grid that ``window`` misses: where its cols are zero."""
    if window.empty():
        return [(slice(0, hw_out[0]), slice(0, hw_out[1]))]
    r0, r1 = window.out_rows.start, window.out_rows.stop
    c0, c1 = window.out_cols.start, window.out_cols.stop
    pieces = [(slice(0, r0), slice(0, hw_out[1])), (slice(r1, hw_out[0]), slice(0, hw_out[1]))]
    pieces += [(slice(r0, r1), slice(0, c0)), (slice(r0, r1), slice(c1, hw_out[1]))]
    return [(rows, cols) for rows, cols in pieces if rows.start < rows.stop and cols.start < cols.stop]


def _by_position(cols: torch.Tensor, group_major: bool) -> torch.Tensor:
    """A ``cols`` buffer (see ``_gather_cols``) as the view ``[B, H_out, W_out, n, groups, Cg]``."""
    return cols.permute(1, 2, 3, 4, 0, 5) if group_major else cols.permute(0, 2, 3, 4, 1, 5)


def _gather_cols(
    x: torch.Tensor,
    windows: list[TapWindow],
    groups: int,
    hw_out: tuple[int, int],
    group_major: bool,
    scratch: torch.Tensor | None = None,
) -> torch.Tensor:
    """The tapped input, channels innermost; zero where a tap falls in the padding.

    ``group_major``: ``[groups, B, H_out, W_out, n, Cg]``, one ``[M, n*Cg]`` matrix per group (the
    channels_last path); else ``[B, groups, H_out, W_out, n, Cg]``, one ``[H_out*W_out, n*Cg]`` matrix
    per image and group (the NCHW path). Either way a row is (tap, channel) pairs of one position.
    """
    b, cg, n = x.shape[0], x.shape[1] // groups, len(windows)
    shape = (groups, b, *hw_out, n, cg) if group_major else (b, groups, *hw_out, n, cg)
    cols = _buffer(shape, x, scratch)
    dst = _by_position(cols, group_major)
    src = x.permute(0, 2, 3, 1).unflatten(-1, (groups, cg))  # [B, H, W, g, Cg] view of either layout
    for w in windows:
        for rows, out_cols in _uncovered(w, hw_out):
            dst[:, rows, out_cols, w.index].zero_()
        if not w.empty():
            dst[:, w.out_rows, w.out_cols, w.index].copy_(src[:, w.in_rows, w.in_cols])
    return cols


def _tapped_weight(weight: torch.Tensor, taps: torch.Tensor, groups: int) -> torch.Tensor:
    """``[groups, n*Cg, Og]`` with rows ordered (tap, input channel), matching ``cols``."""
    c_out, cg = weight.shape[:2]
    wt = weight.flatten(2).permute(2, 1, 0).index_select(0, taps)  # [n, Cg, C_out]
    return wt.view(-1, cg, groups, c_out // groups).permute(2, 0, 1, 3).reshape(groups, -1, c_out // groups)


def _untapped_weight_grad(
    gwt: torch.Tensor, weight_shape: Sequence[int], taps: torch.Tensor, weight_format: torch.memory_format
) -> torch.Tensor:
    """``[groups, n*Cg, Og]`` (rows as ``_tapped_weight``) -> ``[C_out, Cg, k, k]`` in ``weight_format``,
    zero off the taps."""
    c_out, cg, k, _ = weight_shape
    groups, n = gwt.shape[0], taps.numel()
    grad_weight = _zeros(weight_shape, gwt, weight_format)
    per_tap = gwt.view(groups, n, cg, -1).permute(0, 3, 2, 1).reshape(c_out, cg, n)
    grad_weight.view(c_out, cg, k * k).index_copy_(2, taps, per_tap)
    return grad_weight


def _group_matmul(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``a [g, M, K] @ b [g, K, N]`` (into ``out`` when given): a plain GEMM when g == 1, which BLAS runs
    on the whole M at once."""
    if out is None:
        out = torch.empty((a.shape[0], a.shape[1], b.shape[2]), dtype=a.dtype, device=a.device)
    if a.shape[0] == 1:
        torch.mm(a[0], b[0], out=out[0])
    else:
        torch.bmm(a, b, out=out)
    return out


def _zeros(shape: Sequence[int], like: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """A zero tensor of ``like``'s dtype and device in ``memory_format``."""
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=memory_format).zero_()


def _buffer(shape: Sequence[int], like: torch.Tensor, scratch: torch.Tensor | None) -> torch.Tensor:
    """A contiguous ``shape`` tensor: the front of ``scratch`` (a flat buffer reused across a pass's
    chunks) when given, else a new one."""
    if scratch is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    return scratch[: math.prod(shape)].view(shape)


def _batched(weight_groups: torch.Tensor, batch: int) -> torch.Tensor:
    """``[g, R, C]`` -> ``[batch*g, R, C]``: a stride-0 view for g == 1 (bmm reads it without a copy);
    for g > 1 the batch and group dims cannot merge into one stride, so reshape copies (small: weights)."""
    g = weight_groups.shape[0]
    return (
        weight_groups.unsqueeze(0).expand(batch, -1, -1, -1).reshape(batch * g, *weight_groups.shape[1:])
        if g > 1
        else weight_groups.expand(batch, -1, -1)
    )


def _grad_out_groups(grad_out: torch.Tensor, groups: int) -> torch.Tensor:
    """``grad_out`` as ``[groups, M, Og]`` (a view when channels_last and groups == 1)."""
    b, c_out, ho, wo = grad_out.shape
    gl = grad_out.permute(0, 2, 3, 1)
    if groups == 1:
        return gl.reshape(1, b * ho * wo, c_out)
    return gl.unflatten(-1, (groups, -1)).permute(3, 0, 1, 2, 4).reshape(groups, b * ho * wo, c_out // groups)


def images_per_chunk(x_shape: Sequence[int], n: int, hw_out, itemsize: int) -> int:
    """Images per pass: the whole batch while its ``cols`` stay under ``CHUNK_FROM_BYTES``, else about
    ``CHUNK_BYTES`` of them (at least one image)."""
    batch, c_in = x_shape[0], x_shape[1]
    per_image = n * c_in * hw_out[0] * hw_out[1] * itemsize
    if batch * per_image < CHUNK_FROM_BYTES:
        return max(batch, 1)
    return max(1, min(batch, CHUNK_BYTES // max(per_image, 1)))


def _chunks(x_shape: Sequence[int], n: int, hw_out, like: torch.Tensor):
    """The batch slices a pass works on, in order (one empty slice for an empty batch), and the flat
    buffer every chunk's cols (or grad_cols) share: None for a single pass, whose buffers are
    allocated as they are needed (and the forward's cols kept)."""
    batch, step = x_shape[0], images_per_chunk(x_shape, n, hw_out, like.element_size())
    chunks = [slice(b0, min(batch, b0 + step)) for b0 in range(0, batch, step)] or [slice(0, 0)]
    if len(chunks) == 1:
        return chunks, None
    return chunks, like.new_empty(step * n * x_shape[1] * hw_out[0] * hw_out[1])


def keeps_cols(
    x_shape: Sequence[int], weight_shape: Sequence[int], n: int, hw_out, groups: int, itemsize: int
) -> bool:
    """Whether ``dcs_forward_keeping_cols`` returns the gathered cols: the forward ran in one pass and
    they are at most ``KEEP_COLS_MAX_INPUTS`` times the input."""
    h, w = x_shape[-2:]
    fits = n * hw_out[0] * hw_out[1] <= KEEP_COLS_MAX_INPUTS * h * w
    one_pass = images_per_chunk(x_shape, n, hw_out, itemsize) >= x_shape[0]
    return fits and one_pass and not _is_depthwise(weight_shape, groups)


@torch.no_grad()  # values only: autograd is kernels/op.py's, and out= GEMMs refuse it
def dcs_forward(x, weight, bias, taps, stride, padding: Pads, dilation, groups: int) -> torch.Tensor:
    """Output ``[B, C_out, H_out, W_out]`` in the memory format of ``x``."""
    return _forward(x, weight, bias, taps, stride, padding, dilation, groups)[0]


@torch.no_grad()  # values only: autograd is kernels/op.py's, and out= GEMMs refuse it
def dcs_forward_keeping_cols(
    x, weight, bias, taps, stride, padding: Pads, dilation, groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``dcs_forward``'s output and, flattened, the cols it gathered, for ``dcs_grad_weight(cols=...)``.

    The cols are ``[B*H_out*W_out*n*C_in]`` (the input's dtype) when ``keeps_cols``, else empty.
    """
    out, cols = _forward(x, weight, bias, taps, stride, padding, dilation, groups)
    n, hw_out = taps.numel(), out.shape[-2:]
    keep = cols is not None and keeps_cols(x.shape, weight.shape, n, hw_out, groups, x.element_size())
    return out, cols.view(-1) if keep else x.new_empty(0)


def _forward(x, weight, bias, taps, stride, padding: Pads, dilation, groups: int):
    """The output and the gathered cols (None for depthwise layers, which gather none)."""
    b, _, h, w = x.shape
    c_out, _, k, _ = weight.shape
    hw_out = output_hw(h, w, k, stride, padding, dilation)
    windows = tap_windows(taps.tolist(), k, (h, w), hw_out, stride, padding, dilation)
    if _is_depthwise(weight.shape, groups):
        fmt = _memory_format(x)
        out = _zeros((b, c_out, *hw_out), x, fmt)
        wt = weight.flatten(1).index_select(1, taps)  # [C, n]
        for win in windows:
            if not win.empty():
                out[:, :, win.out_rows, win.out_cols].addcmul_(
                    x[:, :, win.in_rows, win.in_cols], wt[:, win.index].view(1, -1, 1, 1)
                )
        return (out if bias is None else out.add_(bias.view(1, -1, 1, 1))), None
    wt = _tapped_weight(weight, taps, groups)  # [g, n*Cg, Og]
    fmt = _memory_format(x)
    one_gemm = _one_gemm(x.shape, weight.shape, len(windows), hw_out, groups, fmt)
    out = torch.empty((b, c_out, *hw_out), dtype=x.dtype, device=x.device, memory_format=fmt)
    chunks, scratch = _chunks(x.shape, len(windows), hw_out, x)
    for chunk in chunks:
        cols = _forward_chunk(x[chunk], wt, bias, windows, groups, hw_out, out[chunk], scratch, one_gemm)
    return out, (cols if scratch is None else None)


def _forward_chunk(
    x, wt, bias, windows: list[TapWindow], groups: int, hw_out, out, scratch, one_gemm: bool
) -> torch.Tensor:
    """Write the output of the images ``x`` into ``out`` (same images, ``x``'s layout); returns their cols
    (in ``scratch`` when given), laid out for ``one_gemm`` (see ``_one_gemm``)."""
    b = x.shape[0]
    c_out = out.shape[1]
    ho, wo = hw_out
    kg = wt.shape[1]  # n*Cg, the GEMMs' reduction
    if one_gemm:
        # One GEMM per group over all M = B*H_out*W_out rows; [M, C_out] is the channels_last output,
        # written in place when out has that layout, else copied into out's (the NCHW deep layers).
        cols = _gather_cols(x, windows, groups, hw_out, True, scratch).view(groups, b * ho * wo, kg)
        by_position = out.permute(0, 2, 3, 1)  # [B, H_out, W_out, C_out], a view in either layout
        if groups == 1 and _memory_format(out) == torch.channels_last:
            rows = by_position.view(b * ho * wo, c_out)
            if bias is None:
                torch.mm(cols[0], wt[0], out=rows)
            else:
                torch.addmm(bias, cols[0], wt[0], out=rows)
            return cols
        per_group = torch.bmm(cols, wt)  # [g, M, Og]
        if bias is not None:
            per_group += bias.view(groups, 1, -1)
        by_group = per_group.view(groups, b, ho, wo, c_out // groups).permute(1, 2, 3, 0, 4)
        by_position.unflatten(-1, (groups, -1)).copy_(by_group)
        return cols
    # Per image and group out[Og, HW] = W_taps^T [Og, n*Cg] @ cols^T [n*Cg, HW]: lands in NCHW.
    cols = _gather_cols(x, windows, groups, hw_out, False, scratch).view(b * groups, ho * wo, kg)
    per_group = out.view(b * groups, c_out // groups, ho * wo)
    torch.bmm(_batched(wt.transpose(1, 2), b), cols.transpose(1, 2), out=per_group)
    if bias is not None:
        out.add_(bias.view(1, -1, 1, 1))
    return cols


@torch.no_grad()  # values only: autograd is kernels/op.py's, and out= GEMMs refuse it
def dcs_grad_input(grad_out, x_shape, x_format, weight, taps, stride, padding: Pads, dilation, groups: int):
    """Gradient of the input, ``[B, C_in, H, W]`` in ``x_format``."""
    h, w = x_shape[-2:]
    k = weight.shape[-1]
    hw_out = tuple(grad_out.shape[-2:])
    windows = tap_windows(taps.tolist(), k, (h, w), hw_out, stride, padding, dilation)
    gx = torch.empty(x_shape, dtype=grad_out.dtype, device=grad_out.device, memory_format=x_format)
    if _is_depthwise(weight.shape, groups):
        gx.zero_()
        wt = weight.flatten(1).index_select(1, taps)
        for win in windows:
            if not win.empty():
                gx[:, :, win.in_rows, win.in_cols].addcmul_(
                    grad_out[:, :, win.out_rows, win.out_cols], wt[:, win.index].view(1, -1, 1, 1)
                )
        return gx
    wt = _tapped_weight(weight, taps, groups)  # [g, n*Cg, Og]
    one_gemm = _one_gemm(x_shape, weight.shape, len(windows), hw_out, groups, x_format)
    chunks, scratch = _chunks(x_shape, len(windows), hw_out, grad_out)
    for chunk in chunks:
        _grad_input_chunk(grad_out[chunk], gx[chunk], wt, windows, groups, x_format, scratch, one_gemm)
    return gx


def _grad_input_chunk(
    grad_out, gx, wt, windows: list[TapWindow], groups: int, x_format, scratch, one_gemm: bool
) -> None:
    """Write the input gradient of the images of ``grad_out`` into ``gx`` (those images, ``x_format``),
    with their grad_cols in ``scratch`` when given."""
    b, c_in, h, w = gx.shape
    hw_out = tuple(grad_out.shape[-2:])
    n, cg = len(windows), c_in // groups
    if one_gemm:
        # The adds run in channels_last; an NCHW gx (deep layers, see _one_gemm) is converted once.
        target = (
            gx if x_format == torch.channels_last else torch.empty_like(gx, memory_format=torch.channels_last)
        )
        target.zero_()
        go = _grad_out_groups(grad_out, groups)
        gcols = _buffer((groups, go.shape[1], wt.shape[1]), grad_out, scratch)  # [g, M, n*Cg]
        _group_matmul(go, wt.transpose(1, 2), out=gcols)
        gcols = _by_position(gcols.view(groups, b, *hw_out, n, cg), True)  # [B, H_out, W_out, n, g, Cg]
        gxg = target.permute(0, 2, 3, 1).unflatten(-1, (groups, cg))  # [B, H, W, g, Cg]
        for win in windows:
            if not win.empty():
                gxg[:, win.in_rows, win.in_cols].add_(gcols[:, win.out_rows, win.out_cols, win.index])
        if target is not gx:
            gx.copy_(target)
        return
    gx.zero_()
    # Per image and group grad_cols[n*Cg, HW] = W_taps [n*Cg, Og] @ grad_out [Og, HW]: NCHW order, so
    # the adds below run along rows of both (measured 1.1x-1.3x faster than channels-innermost here).
    go = grad_out.reshape(b * groups, grad_out.shape[1] // groups, hw_out[0] * hw_out[1])
    gcols = _buffer((b * groups, wt.shape[1], go.shape[-1]), grad_out, scratch)
    torch.bmm(_batched(wt, b), go, out=gcols)
    gcols = gcols.view(b, groups, n, cg, *hw_out)
    gxg = gx.view(b, groups, cg, h, w)
    for win in windows:
        if not win.empty():
            gxg[:, :, :, win.in_rows, win.in_cols].add_(gcols[:, :, win.index, :, win.out_rows, win.out_cols])


@torch.no_grad()  # values only: autograd is kernels/op.py's, and out= GEMMs refuse it
def dcs_grad_weight(
    grad_out,
    x,
    weight_shape,
    taps,
    stride,
    padding: Pads,
    dilation,
    groups: int,
    cols=None,
    weight_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """Gradient of the full weight ``[C_out, C_in/groups, k, k]``; zero off the taps.

    ``cols``: what ``dcs_forward_keeping_cols`` returned for this ``x``; gathered again when empty.
    ``weight_format``: the weight's own layout, which the gradient takes so that autograd can hand it
    to ``weight.grad`` without a copy.
    """
    c_out, _, k, _ = weight_shape
    h, w = x.shape[-2:]
    hw_out = tuple(grad_out.shape[-2:])
    windows = tap_windows(taps.tolist(), k, (h, w), hw_out, stride, padding, dilation)
    if _is_depthwise(weight_shape, groups):
        grad_weight = _zeros(weight_shape, grad_out, weight_format)
        gw = grad_weight.view(c_out, 1, k * k)
        for win in windows:
            if not win.empty():
                prod = grad_out[:, :, win.out_rows, win.out_cols] * x[:, :, win.in_rows, win.in_cols]
                gw[:, 0, taps[win.index]] = prod.sum((0, 2, 3))
        return grad_weight
    one_gemm = _one_gemm(x.shape, weight_shape, len(windows), hw_out, groups, _memory_format(x))
    if cols is not None and cols.numel() > 0:
        gwt = _grad_weight_chunk(grad_out, x, cols, windows, groups, hw_out, one_gemm)
    else:
        gwt = None
        chunks, scratch = _chunks(x.shape, len(windows), hw_out, x)
        for chunk in chunks:
            part = _grad_weight_chunk(
                grad_out[chunk], x[chunk], None, windows, groups, hw_out, one_gemm, scratch
            )
            gwt = part if gwt is None else gwt.add_(part)
    return _untapped_weight_grad(gwt, weight_shape, taps, weight_format)


def _grad_weight_chunk(
    grad_out, x, cols, windows: list[TapWindow], groups: int, hw_out, one_gemm: bool, scratch=None
):
    """The tapped weight gradient ``[g, n*Cg, Og]`` from the images of ``x``: from their ``cols`` when
    given (laid out for ``one_gemm``, as the forward gathered them), else gathered (into ``scratch``
    when given)."""
    b, c_in = x.shape[:2]
    c_out = grad_out.shape[1]
    ho, wo = hw_out
    kg = len(windows) * (c_in // groups)  # n*Cg
    if cols is None:
        cols = _gather_cols(x, windows, groups, hw_out, one_gemm, scratch)
    if one_gemm:
        # One GEMM per group, K = every output position of the batch.
        cols = cols.view(groups, b * ho * wo, kg)
        return _group_matmul(cols.transpose(1, 2), _grad_out_groups(grad_out, groups))  # [g, n*Cg, Og]
    # Per image and group [Og, HW] @ [HW, n*Cg], summed over the batch.
    cols = cols.view(b * groups, ho * wo, kg)
    go = grad_out.reshape(b * groups, c_out // groups, ho * wo)
    return torch.bmm(go, cols).view(b, groups, c_out // groups, kg).sum(0).transpose(1, 2)
