"""What the three DCS Triton kernels share: block-size rules, precision choice, index-range checks.

Kept apart from the kernels so each kernel file reads as one kernel and its launcher.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import cpu

__all__ = [
    "INTERPRETING",
    "MIN_DOT_BLOCK",
    "dot_acc",
    "dot_block",
    "fits_int32",
    "input_precision",
    "is_depthwise",
    "output_format",
    "upcast_dot",
]

# TRITON_INTERPRET=1 runs kernels in numpy on CPU tensors; read once, as Triton itself does at import.
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"

# tl.dot needs every block dimension to be at least 16 on the GPU.
MIN_DOT_BLOCK = 16

# Autotuning of the two implicit GEMMs (forward, and grad-input with C_in and C_out swapped): a few
# tile shapes around the sizes of CNN layers (C_in/groups and C_out/groups of 32..640, M in the tens of
# thousands). The interpreter gets one config: it would time every config.
GEMM_GPU_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 256, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=8, num_stages=3),
]
GEMM_INTERPRETER_CONFIGS = [triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 16})]
GEMM_CONFIGS = GEMM_INTERPRETER_CONFIGS if INTERPRETING else GEMM_GPU_CONFIGS

# Element offsets are computed in int32 inside the kernels.
INT32_LIMIT = 2**31 - 1


def dot_block(size: int, cap: int) -> int:
    """The power-of-two block covering ``size`` elements, clamped to ``[MIN_DOT_BLOCK, cap]``."""
    return max(MIN_DOT_BLOCK, min(cap, triton.next_power_of_2(size)))


def input_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` precision for fp32 inputs: TF32 exactly when PyTorch allows it for convolutions."""
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 and not INTERPRETING:
        return "tf32"
    return "ieee"


def upcast_dot(dtype: torch.dtype) -> bool:
    """Whether ``dot_acc`` must upcast its operands: the interpreter's ``tl.dot`` misreads bfloat16
    (numpy has no bfloat16), so there it multiplies in fp32; on the GPU, bf16 goes to the tensor cores."""
    return INTERPRETING and dtype == torch.bfloat16


@triton.jit
def dot_acc(a, b, acc, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``acc + a @ b`` with fp32 accumulation (see ``upcast_dot`` for ``UPCAST``)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)


def fits_int32(*tensors: torch.Tensor) -> bool:
    """True when every element offset of every tensor (from its strides) fits in int32."""
    for t in tensors:
        span = sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride(), strict=True))
        if t.numel() and span > INT32_LIMIT:
            return False
    return True


def is_depthwise(c_out: int, c_in_per_group: int, groups: int) -> bool:
    """One input and one output channel per group (channel multiplier 1): no GEMM, elementwise taps."""
    return c_in_per_group == 1 and c_out == groups


def output_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format an output or gradient of ``x`` is returned in (as ``kernels.cpu`` does)."""
    return cpu._memory_format(x)
