"""Triton weight gradient of the DCS convolution: one reduction over ``B*H_out*W_out`` per tap.

``grad_w[co, ci, tap_t] = sum_{b, oh, ow} grad_out[b, co, oh, ow] * x[b, g*Cg + ci, ih_t, iw_t]``

Only the n tapped columns are computed; the launcher writes them into a zero ``[C_out, C_in/groups,
k, k]`` gradient (the untapped positions get exactly zero, as ``F.conv2d`` with the masked weight
gives them). Per (tap, group) this is a GEMM ``grad_out^T [C_out/groups, M] @ x_t [M, C_in/groups]``
with a long reduction ``M`` and a small output, so the M axis is split (split-K): program
``(tile, tap x group, split)`` reduces one contiguous slice of M into its own fp32 partial tile, and
the launcher sums the partials. No atomics, so the result does not depend on scheduling. The number
of splits is chosen so the grid fills the GPU about ``TARGET_WAVES`` times.

Depthwise layers reduce ``grad_out * x`` elementwise per channel instead of a GEMM.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .triton_common import (
    INTERPRETING,
    dot_acc,
    dot_block,
    fits_int32,
    input_precision,
    is_depthwise,
    upcast_dot,
)

__all__ = ["dcs_grad_weight", "dcs_grad_weight_kernel"]

# Output tile caps (C_out/groups x C_in/groups per program) and the depthwise channel tile.
MAX_BLOCK_O = 64
MAX_BLOCK_I = 64
DEPTHWISE_BLOCK_C = 64

# Split-K: aim for this many programs per SM, and never give a split fewer rows than this.
TARGET_WAVES = 2
MIN_ROWS_PER_SPLIT = 256
# Without an SM count (interpreter, tracing on a machine without a GPU): two splits, which still
# exercise the partial-sum path in the interpreter tests.
FALLBACK_SPLITS = 2

# Autotuning only touches the reduction tile and the pipeline, never the grid: the split count and the
# partial buffer are fixed before launch.
GPU_CONFIGS = [
    triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128}, num_warps=8, num_stages=4),
]
INTERPRETER_CONFIGS = [triton.Config({"BLOCK_M": 32})]


@triton.autotune(
    configs=INTERPRETER_CONFIGS if INTERPRETING else GPU_CONFIGS,
    key=["M_TOTAL", "C_IN_G", "C_OUT_G", "N_TAPS", "SPLITS"],
)
@triton.jit
def dcs_grad_weight_kernel(
    go_ptr, x_ptr, taps_ptr, part_ptr,
    M_TOTAL, SPLITS, H, W, H_OUT, W_OUT, C_IN_G, C_OUT_G, N_TAPS, KSIZE,
    STRIDE_H, STRIDE_W, PAD_TOP, PAD_LEFT, DIL_H, DIL_W,
    sg_b, sg_c, sg_h, sg_w,  # grad_out [B, C_out, H_out, W_out]
    sx_b, sx_c, sx_h, sx_w,  # x [B, C_in, H, W]
    sp_s, sp_t, sp_o, sp_i,  # partials [SPLITS, n, C_out, C_in/groups], fp32
    DEPTHWISE: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    pid_tile = tl.program_id(0)
    pid_tg = tl.program_id(1)
    split = tl.program_id(2)
    i_tiles = tl.cdiv(C_IN_G, BLOCK_I)
    t = pid_tg % N_TAPS
    group = pid_tg // N_TAPS

    tap = tl.load(taps_ptr + t)
    ky = tap // KSIZE
    kx = tap % KSIZE

    # Output channels (rows of this program's tile); all channels of the layer when depthwise.
    offs_o = (pid_tile // i_tiles) * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = offs_o < C_OUT_G
    co = group * C_OUT_G + offs_o
    offs_i = (pid_tile % i_tiles) * BLOCK_I + tl.arange(0, BLOCK_I)
    i_ok = offs_i < C_IN_G
    ci = group * C_IN_G + offs_i

    # This split's slice of the M = B*H_out*W_out output positions, whole BLOCK_M tiles.
    rows_per_split = tl.cdiv(tl.cdiv(M_TOTAL, SPLITS), BLOCK_M) * BLOCK_M
    m_start = split * rows_per_split
    m_stop = tl.minimum(m_start + rows_per_split, M_TOTAL)

    if DEPTHWISE:
        acc_dw = tl.zeros((BLOCK_M, BLOCK_O), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_O, BLOCK_I), dtype=tl.float32)
    for m0 in range(m_start, m_stop, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < m_stop
        ow = offs_m % W_OUT
        oh = (offs_m // W_OUT) % H_OUT
        b = offs_m // (W_OUT * H_OUT)
        ih = oh * STRIDE_H - PAD_TOP + ky * DIL_H
        iw = ow * STRIDE_W - PAD_LEFT + kx * DIL_W
        x_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)  # the padding contributes zero
        go_rows = go_ptr + b * sg_b + oh * sg_h + ow * sg_w
        x_rows = x_ptr + b * sx_b + ih * sx_h + iw * sx_w
        if DEPTHWISE:
            gv = tl.load(go_rows[:, None] + co[None, :] * sg_c, mask=m_ok[:, None] & o_ok[None, :], other=0.0)
            xv = tl.load(x_rows[:, None] + co[None, :] * sx_c, mask=x_ok[:, None] & o_ok[None, :], other=0.0)
            acc_dw += gv.to(tl.float32) * xv.to(tl.float32)
        else:
            gv = tl.load(go_rows[None, :] + co[:, None] * sg_c, mask=m_ok[None, :] & o_ok[:, None], other=0.0)
            xv = tl.load(x_rows[:, None] + ci[None, :] * sx_c, mask=x_ok[:, None] & i_ok[None, :], other=0.0)
            acc = dot_acc(gv, xv, acc, INPUT_PRECISION, UPCAST_DOT)

    part = part_ptr + split * sp_s + t * sp_t
    if DEPTHWISE:
        tl.store(part + co * sp_o, tl.sum(acc_dw, axis=0), mask=o_ok)
    else:
        tl.store(part + co[:, None] * sp_o + offs_i[None, :] * sp_i, acc, mask=o_ok[:, None] & i_ok[None, :])


def _split_count(device: torch.device, programs: int, m_total: int) -> int:
    """Splits of the M reduction: enough programs to fill the GPU, each split at least a few tiles long."""
    if INTERPRETING or device.type != "cuda" or not torch.cuda.is_available():
        return FALLBACK_SPLITS
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    wanted = triton.cdiv(TARGET_WAVES * sms, programs)
    return max(1, min(wanted, m_total // MIN_ROWS_PER_SPLIT))


def supports(grad_out: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether the launcher can run this call (one dtype, index ranges fit in int32)."""
    return grad_out.dtype == x.dtype and fits_int32(grad_out, x)


def dcs_grad_weight(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight_shape: tuple[int, int, int, int],
    taps: torch.Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
    *,
    weight_format: torch.memory_format = torch.contiguous_format,
    traceable: bool = True,
) -> torch.Tensor:
    """Launch the grad-weight kernel: the full ``[C_out, C_in/groups, k, k]`` gradient, zero off the taps.

    Same contract as ``kernels.cpu.dcs_grad_weight``; the result has ``grad_out``'s dtype and
    ``weight_format``'s layout.

    ``traceable``: launch through ``wrap_triton`` (the ``triton_op`` bodies, which torch.compile traces);
    False launches the kernel itself, for eager calls (why: ``kernels.triton_backend``).
    """
    c_out, c_in_g, k, _ = weight_shape
    b, _, h, w = x.shape
    left, _, top, _ = padding
    h_out, w_out = grad_out.shape[-2:]
    n = taps.numel()
    taps = taps.to(device=x.device, dtype=torch.long)
    m_total = b * h_out * w_out
    depthwise = is_depthwise(c_out, c_in_g, groups)
    if depthwise:
        grid_groups, c_out_g, block_o, block_i = 1, c_out, DEPTHWISE_BLOCK_C, 1
    else:
        grid_groups, c_out_g = groups, c_out // groups
        block_o, block_i = dot_block(c_out_g, MAX_BLOCK_O), dot_block(c_in_g, MAX_BLOCK_I)
    tiles = triton.cdiv(c_out_g, block_o) * triton.cdiv(c_in_g, block_i)
    splits = _split_count(x.device, tiles * n * grid_groups, m_total)
    partials = torch.empty((splits, n, c_out, c_in_g), dtype=torch.float32, device=x.device)

    grid = (tiles, n * grid_groups, splits)
    (wrap_triton(dcs_grad_weight_kernel) if traceable else dcs_grad_weight_kernel)[grid](
        grad_out, x, taps, partials,
        m_total, splits, h, w, h_out, w_out, c_in_g, c_out_g, n, k,
        stride[0], stride[1], top, left, dilation[0], dilation[1],
        *grad_out.stride(), *x.stride(), *partials.stride(),
        DEPTHWISE=depthwise, INPUT_PRECISION=input_precision(x.dtype), UPCAST_DOT=upcast_dot(x.dtype),
        BLOCK_O=block_o, BLOCK_I=block_i,
    )  # fmt: skip
    tapped = partials.sum(0).permute(1, 2, 0)  # [C_out, C_in/groups, n]
    grad_w = torch.empty(
        weight_shape, dtype=grad_out.dtype, device=grad_out.device, memory_format=weight_format
    ).zero_()
    grad_w.view(c_out, c_in_g, k * k).index_copy_(2, taps, tapped.to(grad_out.dtype))
    return grad_w  # the base tensor, not a view of it (an op's output must not be a view)
