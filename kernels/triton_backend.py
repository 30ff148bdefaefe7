"""The Triton backend of the DCS op: which calls it takes, its ``triton_op``s, and the compile hook.

``kernels.op`` routes each eager call of ``dcspass::dcs_conv2d`` (and its two gradient ops) to the
first backend whose predicate accepts it. This module's predicate, ``accepts``, takes CUDA tensors of
fp32 / fp16 / bf16; the functions ``dcs_forward``, ``dcs_grad_input`` and ``dcs_grad_weight`` then
run the Triton kernels, or hand the call to ``kernels.cpu`` (which is also correct on CUDA) when a
launcher cannot take it (int32 index overflow, grid limits). So an unsupported call is slower, never
wrong.

The kernels are exposed as ``torch.library.triton_op``s (``dcspass::dcs_conv2d_triton`` and the two
``*_triton`` gradients), whose bodies call the kernels through ``wrap_triton``. Under
``torch.compile`` the three public ops are opaque custom ops; ``register()`` adds a
``FunctionalTensorMode`` rule to each that, for calls the backend takes, swaps in the ``triton_op``,
which AOTAutograd then decomposes into ``triton_kernel_wrapper_functional`` nodes. Inductor sees the
kernels themselves in the graph. Autograd and fake tensors are still those of the public ops
(``kernels.op``): the rule applies below autograd, to the forward and each backward op separately.

Importing this module registers it (``register()``, at the bottom). ``kernels/__init__.py`` does not
import it: it registers a loader with ``kernels.op`` that imports it on the first call with a CUDA
tensor (Triton costs about a second to import).

CPU tensors stay on the PyTorch path. Tests run the kernels on CPU tensors in Triton's interpreter,
either by calling the launchers directly or inside ``interpreting_on_cpu()``, which makes ``accepts``
take CPU tensors too.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch
from torch import Tensor
from torch._subclasses.functional_tensor import FunctionalTensorMode
from torch.library import triton_op

from . import cpu, op, triton_forward, triton_grad_input, triton_grad_weight
from .triton_common import INTERPRETING

__all__ = [
    "SUPPORTED_DTYPES",
    "accepts",
    "dcs_conv2d_grad_input_triton",
    "dcs_conv2d_grad_weight_triton",
    "dcs_conv2d_triton",
    "dcs_forward",
    "dcs_grad_input",
    "dcs_grad_weight",
    "interpreting_on_cpu",
    "register",
]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_cpu_claimed = False  # set only by interpreting_on_cpu()


@contextlib.contextmanager
def interpreting_on_cpu() -> Iterator[None]:
    """Let the backend take CPU tensors, run by Triton's interpreter (for tests without a GPU).

    Raises ``RuntimeError`` unless ``TRITON_INTERPRET=1`` was set before Triton was imported.
    """
    global _cpu_claimed
    if not INTERPRETING:
        raise RuntimeError(
            "interpreting_on_cpu() needs Triton's interpreter: set TRITON_INTERPRET=1 before importing "
            "triton (tests/conftest.py does)"
        )
    previous, _cpu_claimed = _cpu_claimed, True
    try:
        yield
    finally:
        _cpu_claimed = previous


def accepts(t: Tensor, weight: Tensor, groups: int) -> bool:
    """Whether the Triton kernels take a call whose input (or grad_out) is ``t``.

    CUDA tensors (CPU ones only inside ``interpreting_on_cpu()``) of a supported dtype, with a weight
    of the same dtype. Size limits are checked later, by each launcher's ``supports``.
    """
    on_device = t.is_cuda or (_cpu_claimed and t.device.type == "cpu")
    return on_device and t.dtype in SUPPORTED_DTYPES and weight.dtype == t.dtype and t.numel() > 0


@triton_op("dcspass::dcs_conv2d_triton", mutates_args=())
def dcs_conv2d_triton(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    taps: Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> Tensor:
    """The forward kernel as an op; arguments as ``dcspass::dcs_conv2d``."""
    return triton_forward.dcs_forward(
        x, weight, bias, taps, tuple(stride), tuple(padding), tuple(dilation), groups
    )


@triton_op("dcspass::dcs_conv2d_grad_input_triton", mutates_args=())
def dcs_conv2d_grad_input_triton(
    grad_out: Tensor,
    x_size: list[int],
    channels_last: bool,
    weight: Tensor,
    taps: Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> Tensor:
    """The grad-input kernel as an op; arguments as ``dcspass::dcs_conv2d_grad_input``."""
    fmt = op.memory_format(channels_last)
    return triton_grad_input.dcs_grad_input(
        grad_out, tuple(x_size), fmt, weight, taps, tuple(stride), tuple(padding), tuple(dilation), groups
    )


@triton_op("dcspass::dcs_conv2d_grad_weight_triton", mutates_args=())
def dcs_conv2d_grad_weight_triton(
    grad_out: Tensor,
    x: Tensor,
    weight_size: list[int],
    taps: Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    channels_last_weight: bool = False,
) -> Tensor:
    """The grad-weight kernel as an op; arguments as ``dcspass::dcs_conv2d_grad_weight``."""
    fmt = op.memory_format(channels_last_weight)
    return triton_grad_weight.dcs_grad_weight(
        grad_out,
        x,
        tuple(weight_size),
        taps,
        tuple(stride),
        tuple(padding),
        tuple(dilation),
        groups,
        weight_format=fmt,
    )


# The backend module contract of kernels.op: the signatures of kernels.cpu. Eager calls launch the
# kernels themselves, not through the triton_ops: an eager call of a triton_op dispatches a second
# custom op, and wrap_triton outside a trace dispatches a higher-order op per launch. On an H100
# (torch 2.11, benchmarks/op_gpu_overhead.py) the forward launcher through wrap_triton cost 1.18 ms of
# host time per call, launching the kernel itself 0.32 ms, for a 12 us kernel.


def dcs_forward(x, weight, bias, taps, stride, padding, dilation, groups: int) -> Tensor:
    """``kernels.cpu.dcs_forward`` on the Triton kernel when the launcher supports the call."""
    if not triton_forward.supports(x, weight):
        return cpu.dcs_forward(x, weight, bias, taps, stride, padding, dilation, groups)
    return triton_forward.dcs_forward(
        x, weight, bias, taps, tuple(stride), tuple(padding), tuple(dilation), groups, traceable=False
    )


def dcs_grad_input(grad_out, x_shape, x_format, weight, taps, stride, padding, dilation, groups: int):
    """``kernels.cpu.dcs_grad_input`` on the Triton kernel when the launcher supports the call."""
    if not triton_grad_input.supports(grad_out, tuple(x_shape), weight, tuple(stride), groups):
        return cpu.dcs_grad_input(
            grad_out, x_shape, x_format, weight, taps, stride, padding, dilation, groups
        )
    return triton_grad_input.dcs_grad_input(
        grad_out,
        tuple(x_shape),
        x_format,
        weight,
        taps,
        tuple(stride),
        tuple(padding),
        tuple(dilation),
        groups,
        traceable=False,
    )


def dcs_grad_weight(
    grad_out,
    x,
    weight_shape,
    taps,
    stride,
    padding,
    dilation,
    groups: int,
    weight_format=torch.contiguous_format,
) -> Tensor:
    """``kernels.cpu.dcs_grad_weight`` on the Triton kernel when the launcher supports the call."""
    if not triton_grad_weight.supports(grad_out, x):
        return cpu.dcs_grad_weight(
            grad_out, x, weight_shape, taps, stride, padding, dilation, groups, weight_format=weight_format
        )
    return triton_grad_weight.dcs_grad_weight(
        grad_out,
        x,
        tuple(weight_shape),
        taps,
        tuple(stride),
        tuple(padding),
        tuple(dilation),
        groups,
        weight_format=weight_format,
        traceable=False,
    )


# Compile hook: which triton_op replaces a public op, and whether the call qualifies.


def _traceable(t: Tensor, weight: Tensor, groups: int) -> bool:
    """``accepts`` for traced calls: real CUDA only (the interpreter cannot run on fake tensors)."""
    return not INTERPRETING and t.is_cuda and accepts(t, weight, groups)


def _forward_qualifies(x, weight, bias, taps, stride, padding, dilation, groups) -> bool:
    return _traceable(x, weight, groups) and triton_forward.supports(x, weight)


def _grad_input_qualifies(grad_out, x_size, channels_last, weight, taps, stride, padding, dilation, groups):
    return _traceable(grad_out, weight, groups) and triton_grad_input.supports(
        grad_out, tuple(x_size), weight, tuple(stride), groups
    )


def _grad_weight_qualifies(
    grad_out, x, weight_size, taps, stride, padding, dilation, groups, cols=None, channels_last_weight=False
) -> bool:
    # As kernels.op does for this op: there is no weight tensor, so x stands in for its dtype; the
    # launcher's supports() then checks grad_out's dtype against x's.
    return _traceable(x, x, groups) and triton_grad_weight.supports(grad_out, x)


def _decompose_into(triton_version, qualifies):
    """A ``FunctionalTensorMode`` rule: run ``triton_version`` (traced into kernels) or keep the op.

    ``torch.export`` keeps the public op, as it keeps every ``triton_op``: an exported program stays
    at the level of ``dcspass::dcs_conv2d`` rather than holding one backend's kernels.
    """
    from torch.export._trace import custom_triton_ops_decomposition_disabled

    def rule(mode, func, types, args, kwargs):
        if kwargs or custom_triton_ops_decomposition_disabled() or not qualifies(*args):
            return mode.__torch_dispatch__(func, types, args, kwargs)
        with mode:
            return triton_version(*args)

    return rule


def _forward_keeping_no_cols(x, weight, bias, taps, stride, padding, dilation, groups):
    """The public forward's ``(out, cols)``: the kernels gather nothing to keep, so ``cols`` is empty."""
    return dcs_conv2d_triton(x, weight, bias, taps, stride, padding, dilation, groups), x.new_empty(0)


def _grad_weight_ignoring_cols(
    grad_out, x, weight_size, taps, stride, padding, dilation, groups, cols=None, channels_last_weight=False
):
    return dcs_conv2d_grad_weight_triton(
        grad_out, x, weight_size, taps, stride, padding, dilation, groups, channels_last_weight
    )


_registered = False


def register() -> None:
    """Make ``kernels.op`` route accepted calls here, eagerly and under ``torch.compile`` (idempotent)."""
    global _registered
    if _registered:
        return
    _registered = True
    op.register_backend(accepts, sys.modules[__name__])
    for public, triton_version, qualifies in (
        (op.dcs_conv2d, _forward_keeping_no_cols, _forward_qualifies),
        (op.dcs_conv2d_grad_input, dcs_conv2d_grad_input_triton, _grad_input_qualifies),
        (op.dcs_conv2d_grad_weight, _grad_weight_ignoring_cols, _grad_weight_qualifies),
    ):
        public.register_torch_dispatch(FunctionalTensorMode, _decompose_into(triton_version, qualifies))


register()
