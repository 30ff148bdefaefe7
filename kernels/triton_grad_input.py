"""Triton input gradient of the DCS convolution: a gather over output positions, race-free.

``grad_x[b, g*Cg + ci, ih, iw] = sum_t sum_co grad_out[b, co, oh_t, ow_t] * w[co, ci, tap_t]``

over the taps t whose window puts output position ``(oh_t, ow_t) = ((ih + pad_top - ky_t*dil_h) /
stride_h, ...)`` on ``(ih, iw)``; the division must be exact and land inside the output. Each program
owns a ``BLOCK_M x BLOCK_N`` tile of the input gradient (input positions x input channels of one
group) and writes every element of it exactly once: no atomics, deterministic, no zero-fill pass.

Stride phases: with stride s, a tap reaches only the input rows ``ih`` congruent to ``ky*dil - pad``
mod s. So the rows of the M axis are grouped by phase ``(ih mod s_h, iw mod s_w)``, one grid slice per
phase; a program then knows from two scalars whether a tap touches any of its rows at all and skips
the taps that do not. Total work is n taps over the *output* positions (as in the forward), not
n taps over every input position with most rows masked, which would cost ``s_h*s_w`` times more.

As a GEMM per (group, phase): rows ``B*ceil(H/s_h)*ceil(W/s_w)`` input positions, columns the group's
``C_in/groups`` channels, reduction ``n_hit * C_out/groups``. Depthwise layers accumulate elementwise.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .triton_common import (
    GEMM_CONFIGS,
    dot_acc,
    fits_int32,
    input_precision,
    is_depthwise,
    upcast_dot,
)
from .triton_forward import tapped_weight

__all__ = ["dcs_grad_input", "dcs_grad_input_kernel"]

# CUDA limits grid axes 1 and 2 to this many programs; axis 2 holds groups x stride phases.
MAX_GRID_YZ = 65535


@triton.autotune(configs=GEMM_CONFIGS, key=["B", "H", "W", "C_IN_G", "C_OUT_G", "N_TAPS"])
@triton.jit
def dcs_grad_input_kernel(
    go_ptr, w_ptr, taps_ptr, gx_ptr,
    B, H, W, H_OUT, W_OUT, C_IN_G, C_OUT_G, N_TAPS, KSIZE,
    STRIDE_H, STRIDE_W, PAD_TOP, PAD_LEFT, DIL_H, DIL_W,
    sg_b, sg_c, sg_h, sg_w,  # grad_out [B, C_out, H_out, W_out]
    sw_t, sw_i, sw_o,  # tapped weight [n, C_in/groups, C_out]
    sx_b, sx_c, sx_h, sx_w,  # grad_x [B, C_in, H, W]
    DEPTHWISE: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_gp = tl.program_id(2)
    n_phases = STRIDE_H * STRIDE_W
    group = pid_gp // n_phases
    phase_h = (pid_gp % n_phases) // STRIDE_W
    phase_w = pid_gp % STRIDE_W

    # Input positions of this phase: ih = phase_h + jh*STRIDE_H, iw = phase_w + jw*STRIDE_W.
    rows_h = (H - phase_h + STRIDE_H - 1) // STRIDE_H
    rows_w = (W - phase_w + STRIDE_W - 1) // STRIDE_W
    safe_w = tl.maximum(rows_w, 1)  # a phase can be empty (H < stride); avoid dividing by zero
    safe_h = tl.maximum(rows_h, 1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < B * rows_h * rows_w
    jw = offs_m % safe_w
    jh = (offs_m // safe_w) % safe_h
    b = offs_m // (safe_w * safe_h)
    ih = phase_h + jh * STRIDE_H
    iw = phase_w + jw * STRIDE_W
    go_img = go_ptr + b * sg_b

    # Input channels of this tile (all channels of the layer when depthwise).
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < C_IN_G
    ci = group * C_IN_G + offs_n

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for t in range(N_TAPS):
        tap = tl.load(taps_ptr + t)
        shift_h = phase_h + PAD_TOP - (tap // KSIZE) * DIL_H
        shift_w = phase_w + PAD_LEFT - (tap % KSIZE) * DIL_W
        # The tap reaches this phase only when both shifts are multiples of the stride; the division
        # below is then exact, so floor and truncating division agree even for negative shifts.
        if (shift_h % STRIDE_H == 0) & (shift_w % STRIDE_W == 0):
            oh = jh + shift_h // STRIDE_H
            ow = jw + shift_w // STRIDE_W
            row_ok = m_ok & (oh >= 0) & (oh < H_OUT) & (ow >= 0) & (ow < W_OUT)
            go_rows = go_img + oh * sg_h + ow * sg_w
            w_tap = w_ptr + t * sw_t
            if DEPTHWISE:
                gv = tl.load(
                    go_rows[:, None] + ci[None, :] * sg_c, mask=row_ok[:, None] & n_ok[None, :], other=0.0
                )
                wv = tl.load(w_tap + ci * sw_o, mask=n_ok, other=0.0)
                acc += gv.to(tl.float32) * wv.to(tl.float32)[None, :]
            else:
                for c0 in range(0, C_OUT_G, BLOCK_K):
                    offs_k = c0 + tl.arange(0, BLOCK_K)
                    k_ok = offs_k < C_OUT_G
                    co = group * C_OUT_G + offs_k
                    gv = tl.load(
                        go_rows[:, None] + co[None, :] * sg_c, mask=row_ok[:, None] & k_ok[None, :], other=0.0
                    )
                    wv = tl.load(
                        w_tap + offs_n[None, :] * sw_i + co[:, None] * sw_o,
                        mask=k_ok[:, None] & n_ok[None, :],
                        other=0.0,
                    )
                    acc = dot_acc(gv, wv, acc, INPUT_PRECISION, UPCAST_DOT)

    gx_ptrs = gx_ptr + (b * sx_b + ih * sx_h + iw * sx_w)[:, None] + ci[None, :] * sx_c
    tl.store(gx_ptrs, acc.to(gx_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def supports(
    grad_out: torch.Tensor,
    x_shape: tuple[int, int, int, int],
    weight: torch.Tensor,
    stride: tuple[int, int],
    groups: int,
) -> bool:
    """Whether the launcher can run this call (int32 offsets, grid limits)."""
    b, c_in, h, w = x_shape
    depthwise = is_depthwise(weight.shape[0], weight.shape[1], groups)
    grid_z = (1 if depthwise else groups) * stride[0] * stride[1]
    return fits_int32(grad_out, weight) and b * c_in * h * w <= 2**31 - 1 and grid_z <= MAX_GRID_YZ


def dcs_grad_input(
    grad_out: torch.Tensor,
    x_shape: tuple[int, int, int, int],
    x_format: torch.memory_format,
    weight: torch.Tensor,
    taps: torch.Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
    *,
    traceable: bool = True,
) -> torch.Tensor:
    """Launch the grad-input kernel: ``grad_out [B, C_out, H_out, W_out] -> [B, C_in, H, W]`` in ``x_format``.

    Same contract as ``kernels.cpu.dcs_grad_input``.

    ``traceable``: launch through ``wrap_triton`` (the ``triton_op`` bodies, which torch.compile traces);
    False launches the kernel itself, for eager calls (why: ``kernels.triton_backend``).
    """
    b, c_in, h, w = x_shape
    c_out, c_in_g, k, _ = weight.shape
    left, _, top, _ = padding
    h_out, w_out = grad_out.shape[-2:]
    grad_x = torch.empty(x_shape, dtype=grad_out.dtype, device=grad_out.device, memory_format=x_format)
    taps = taps.to(device=grad_out.device, dtype=torch.long)
    w_taps = tapped_weight(weight, taps)
    depthwise = is_depthwise(c_out, c_in_g, groups)
    grid_groups, c_in_cols, c_out_g = (1, c_in, 1) if depthwise else (groups, c_in_g, c_out // groups)
    phase_rows = b * triton.cdiv(h, stride[0]) * triton.cdiv(w, stride[1])  # rows of the largest phase

    def grid(meta):
        return (
            triton.cdiv(phase_rows, meta["BLOCK_M"]),
            triton.cdiv(c_in_cols, meta["BLOCK_N"]),
            grid_groups * stride[0] * stride[1],
        )

    (wrap_triton(dcs_grad_input_kernel) if traceable else dcs_grad_input_kernel)[grid](
        grad_out, w_taps, taps, grad_x,
        b, h, w, h_out, w_out, c_in_cols, c_out_g, taps.numel(), k,
        stride[0], stride[1], top, left, dilation[0], dilation[1],
        *grad_out.stride(), *w_taps.stride(), *grad_x.stride(),
        DEPTHWISE=depthwise, INPUT_PRECISION=input_precision(grad_out.dtype),
        UPCAST_DOT=upcast_dot(grad_out.dtype),
    )  # fmt: skip
    return grad_x
