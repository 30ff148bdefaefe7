"""Triton forward of the DCS convolution: an implicit GEMM over the n drawn taps.

``out[b, co, oh, ow] = bias[co] + sum_t sum_ci x[b, g*Cg + ci, ih_t, iw_t] * w[co, ci, tap_t]``

with ``ih_t = oh*stride_h - pad_top + ky_t*dil_h`` (likewise for ``iw_t``) and ``(ky_t, kx_t) =
divmod(tap_t, k)``. As a GEMM per group: rows ``M = B*H_out*W_out`` output positions, columns the
group's ``C_out/groups`` output channels, reduction ``K = n * C_in/groups``. Nothing is unfolded: each
program owns a ``BLOCK_M x BLOCK_N`` output tile, loops over the taps (read from the taps tensor at run
time, so a new draw never recompiles), and for each tap loads its shifted input rows ``BLOCK_K``
channels at a time straight from ``x`` (zero where the tap falls in the padding) and multiplies them
with the tap's ``BLOCK_K x BLOCK_N`` weight slice, accumulating in fp32.

Depthwise layers (one channel per group) have no reduction over channels; the kernel then tiles
``BLOCK_N`` channels of one "group" and accumulates ``x * w`` elementwise.

Strides are passed for every tensor, so NCHW and channels_last inputs take the same code; the output
is allocated in the input's memory format.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .cpu import output_hw
from .triton_common import (
    GEMM_CONFIGS,
    dot_acc,
    fits_int32,
    input_precision,
    is_depthwise,
    output_format,
    upcast_dot,
)

__all__ = ["dcs_forward", "dcs_forward_kernel"]


@triton.autotune(configs=GEMM_CONFIGS, key=["M_TOTAL", "C_IN_G", "C_OUT_G", "N_TAPS"])
@triton.jit
def dcs_forward_kernel(
    x_ptr, w_ptr, bias_ptr, taps_ptr, out_ptr,
    M_TOTAL, H, W, H_OUT, W_OUT, C_IN_G, C_OUT_G, N_TAPS, KSIZE,
    STRIDE_H, STRIDE_W, PAD_TOP, PAD_LEFT, DIL_H, DIL_W,
    sx_b, sx_c, sx_h, sx_w,  # x [B, C_in, H, W]
    sw_t, sw_i, sw_o,  # tapped weight [n, C_in/groups, C_out]
    so_b, so_c, so_h, so_w,  # out [B, C_out, H_out, W_out]
    HAS_BIAS: tl.constexpr, DEPTHWISE: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    group = tl.program_id(2)

    # Output positions of this tile, decoded from the flat row index m = (b*H_out + oh)*W_out + ow.
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < M_TOTAL
    ow = offs_m % W_OUT
    oh = (offs_m // W_OUT) % H_OUT
    b = offs_m // (W_OUT * H_OUT)
    x_img = x_ptr + b * sx_b

    # Output channels of this tile (all channels of the layer when depthwise: one program column).
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < C_OUT_G
    co = group * C_OUT_G + offs_n

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # One flat loop over (tap, channel block) pairs rather than two nested ones: with n = 2 and a
    # few channel blocks the inner loop alone is too short for the compiler to pipeline its loads.
    k_blocks = 1 if DEPTHWISE else tl.cdiv(C_IN_G, BLOCK_K)
    for step in range(N_TAPS * k_blocks):
        t = step // k_blocks
        tap = tl.load(taps_ptr + t)
        ky = tap // KSIZE
        kx = tap % KSIZE
        ih = oh * STRIDE_H - PAD_TOP + ky * DIL_H
        iw = ow * STRIDE_W - PAD_LEFT + kx * DIL_W
        row_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)  # False in the zero padding
        x_rows = x_img + ih * sx_h + iw * sx_w
        w_tap = w_ptr + t * sw_t
        if DEPTHWISE:
            xv = tl.load(
                x_rows[:, None] + co[None, :] * sx_c, mask=row_ok[:, None] & n_ok[None, :], other=0.0
            )
            wv = tl.load(w_tap + co * sw_o, mask=n_ok, other=0.0)
            acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
        else:
            ci = (step % k_blocks) * BLOCK_K + tl.arange(0, BLOCK_K)
            c_ok = ci < C_IN_G
            xv = tl.load(
                x_rows[:, None] + (group * C_IN_G + ci)[None, :] * sx_c,
                mask=row_ok[:, None] & c_ok[None, :],
                other=0.0,
            )
            wv = tl.load(
                w_tap + ci[:, None] * sw_i + co[None, :] * sw_o, mask=c_ok[:, None] & n_ok[None, :], other=0.0
            )
            acc = dot_acc(xv, wv, acc, INPUT_PRECISION, UPCAST_DOT)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + co, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + (b * so_b + oh * so_h + ow * so_w)[:, None] + co[None, :] * so_c
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def tapped_weight(weight: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """The n tapped kernel slices as ``[n, C_in/groups, C_out]``, output channels contiguous."""
    return weight.flatten(2).index_select(2, taps).permute(2, 1, 0).contiguous()


def supports(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the launcher can run this call (index ranges fit in int32)."""
    return fits_int32(x, weight)


def dcs_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    taps: torch.Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
    *,
    traceable: bool = True,
) -> torch.Tensor:
    """Launch the forward kernel: ``[B, C_in, H, W] -> [B, C_out, H_out, W_out]``, x's memory format.

    Same contract as ``kernels.cpu.dcs_forward``: ``weight`` is the full ``[C_out, C_in/groups, k, k]``
    kernel, ``taps`` LongTensor ``[n]``, ``padding`` ``(left, right, top, bottom)``.

    ``traceable``: launch through ``wrap_triton`` (the ``triton_op`` bodies, which torch.compile traces);
    False launches the kernel itself, for eager calls (why: ``kernels.triton_backend``).
    """
    b, _, h, w = x.shape
    c_out, c_in_g, k, _ = weight.shape
    left, _, top, _ = padding
    h_out, w_out = output_hw(h, w, k, stride, padding, dilation)
    out = torch.empty(
        (b, c_out, h_out, w_out), dtype=x.dtype, device=x.device, memory_format=output_format(x)
    )
    taps = taps.to(device=x.device, dtype=torch.long)
    w_taps = tapped_weight(weight, taps)
    depthwise = is_depthwise(c_out, c_in_g, groups)
    # Depthwise: one "group" whose columns are all C channels; otherwise one grid slice per group.
    grid_groups, c_out_g = (1, c_out) if depthwise else (groups, c_out // groups)
    m_total = b * h_out * w_out

    def grid(meta):
        return (triton.cdiv(m_total, meta["BLOCK_M"]), triton.cdiv(c_out_g, meta["BLOCK_N"]), grid_groups)

    (wrap_triton(dcs_forward_kernel) if traceable else dcs_forward_kernel)[grid](
        x, w_taps, bias if bias is not None else w_taps, taps, out,
        m_total, h, w, h_out, w_out, c_in_g, c_out_g, taps.numel(), k,
        stride[0], stride[1], top, left, dilation[0], dilation[1],
        *x.stride(), *w_taps.stride(), *out.stride(),
        HAS_BIAS=bias is not None, DEPTHWISE=depthwise, INPUT_PRECISION=input_precision(x.dtype),
        UPCAST_DOT=upcast_dot(x.dtype),
    )  # fmt: skip
    return out
