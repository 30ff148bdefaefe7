"""``torch.ops.dcspass``: the DCS convolution as ``torch.library`` custom ops.

Three ops, so ``torch.compile`` and ``torch.export`` see one node per step and each backend can
supply its own kernel for each:

- ``dcspass::dcs_conv2d(x, weight, bias, taps, stride, padding, dilation, groups) -> (out, cols)``
- ``dcspass::dcs_conv2d_grad_input(grad_out, x_size, channels_last, weight, taps, ...)``
- ``dcspass::dcs_conv2d_grad_weight(grad_out, x, weight_size, taps, ..., cols, channels_last_weight)``

The weight gradient comes in the weight's own layout (``channels_last_weight``), so autograd hands
it to ``weight.grad`` without the copy it makes when the layouts differ.

``cols`` is what the forward gathered (the n tapped windows of ``x``, flattened) when the PyTorch
backend ran it and ``kernels.cpu.keeps_cols`` says it is small enough to keep, else an empty tensor:
autograd saves it so the weight gradient need not gather ``x`` again. ``op.conv2d`` returns ``out``
alone.

``padding`` is ``[left, right, top, bottom]``; ``weight`` is the full ``[C_out, C_in/groups, k, k]``
kernel and ``taps`` a LongTensor ``[n]`` of positions in it. Inputs are trusted: validation lives in
``dcspass.functional.dcs_conv2d``. Each op dispatches at run time to a backend module with the
functions ``dcs_forward``, ``dcs_grad_input`` and ``dcs_grad_weight``: ``kernels.cpu`` (pure PyTorch,
every device) unless a faster backend claims the call (``register_backend``). A backend that is costly
to import (Triton: about a second) is registered as a loader instead (``register_backend_loader``) and
imported on the first call that could use it, eager or traced, so CPU users never pay for it.

This package is the lowest layer: it imports nothing from the rest of ``dcspass``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import torch
from torch import Tensor

from . import cpu

__all__ = [
    "conv2d",
    "dcs_conv2d",
    "dcs_conv2d_grad_input",
    "dcs_conv2d_grad_weight",
    "memory_format",
    "register_backend",
    "register_backend_loader",
]

# (predicate, backend) pairs, tried in order; the first predicate that accepts the call wins.
_BACKENDS: list[tuple[Callable[..., bool], ModuleType]] = []

# (wants, load) pairs not loaded yet: ``load()`` registers a backend for inputs where ``wants(t)``.
_PENDING_LOADERS: list[tuple[Callable[[Tensor], bool], Callable[[], None]]] = []


def register_backend(accepts: Callable[..., bool], backend: ModuleType) -> None:
    """Route calls for which ``accepts(x_or_grad, weight, groups)`` is true to ``backend``."""
    _BACKENDS.insert(0, (accepts, backend))


def register_backend_loader(wants: Callable[[Tensor], bool], load: Callable[[], None]) -> None:
    """Run ``load()`` (which calls ``register_backend``) before the first call on a tensor ``wants`` takes.

    Each loader runs at most once. The fake (meta) implementations run it too, so a model compiled
    before any eager call still traces through the loaded backend's compile rules.
    """
    _PENDING_LOADERS.append((wants, load))


def _load_backends_for(t: Tensor) -> None:
    for entry in [entry for entry in _PENDING_LOADERS if entry[0](t)]:
        _PENDING_LOADERS.remove(entry)
        entry[1]()


def _backend(t: Tensor, weight: Tensor, groups: int) -> ModuleType:
    if _PENDING_LOADERS:
        _load_backends_for(t)
    for accepts, backend in _BACKENDS:
        if accepts(t, weight, groups):
            return backend
    return cpu


def _channels_last(x: Tensor) -> bool:
    return cpu._memory_format(x) == torch.channels_last


def memory_format(channels_last: bool) -> torch.memory_format:
    """The layout a boolean op argument (``channels_last``, ``channels_last_weight``) names."""
    return torch.channels_last if channels_last else torch.contiguous_format


def _empty_nchw(size, like: Tensor, channels_last: bool) -> Tensor:
    return torch.empty(size, dtype=like.dtype, device=like.device, memory_format=memory_format(channels_last))


@torch.library.custom_op("dcspass::dcs_conv2d", mutates_args=())
def dcs_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    taps: Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> tuple[Tensor, Tensor]:
    args = (x, weight, bias, taps, tuple(stride), tuple(padding), tuple(dilation), groups)
    backend = _backend(x, weight, groups)
    if backend is cpu:
        out, cols = cpu.dcs_forward_keeping_cols(*args)
    else:
        out, cols = backend.dcs_forward(*args), x.new_empty(0)
    # A view of a backend's buffer makes autograd refuse in-place ops on the output (conv followed
    # by ReLU(inplace=True), as in VGG); detach() drops the view relation without copying.
    return (out.detach() if out._is_view() else out), cols


@dcs_conv2d.register_fake
def _(x, weight, bias, taps, stride, padding, dilation, groups):
    b, c_in, h, w = x.shape
    hw_out = cpu.output_hw(h, w, weight.shape[-1], stride, padding, dilation)
    n = taps.shape[0]
    # _backend runs any pending loader first (Triton, on the first CUDA tensor), as the fakes below do.
    on_cpu_path = _backend(x, weight, groups) is cpu
    keep = on_cpu_path and cpu.keeps_cols(x.shape, weight.shape, n, hw_out, groups, x.element_size())
    cols = x.new_empty(b * hw_out[0] * hw_out[1] * n * c_in if keep else 0)
    return _empty_nchw((b, weight.shape[0], *hw_out), x, _channels_last(x)), cols


def conv2d(x, weight, bias, taps, stride, padding, dilation, groups: int) -> Tensor:
    """``dcspass::dcs_conv2d``'s output alone: what callers of the op want."""
    return dcs_conv2d(x, weight, bias, taps, stride, padding, dilation, groups)[0]


@torch.library.custom_op("dcspass::dcs_conv2d_grad_input", mutates_args=())
def dcs_conv2d_grad_input(
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
    fmt = memory_format(channels_last)
    return _backend(grad_out, weight, groups).dcs_grad_input(
        grad_out, tuple(x_size), fmt, weight, taps, tuple(stride), tuple(padding), tuple(dilation), groups
    )


@dcs_conv2d_grad_input.register_fake
def _(grad_out, x_size, channels_last, weight, taps, stride, padding, dilation, groups):
    _load_backends_for(grad_out)
    return _empty_nchw(x_size, grad_out, channels_last)


@torch.library.custom_op("dcspass::dcs_conv2d_grad_weight", mutates_args=())
def dcs_conv2d_grad_weight(
    grad_out: Tensor,
    x: Tensor,
    weight_size: list[int],
    taps: Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    cols: Tensor | None = None,
    channels_last_weight: bool = False,
) -> Tensor:
    weight_meta = torch.empty(weight_size, device="meta", dtype=x.dtype)
    args = (grad_out, x, tuple(weight_size), taps, tuple(stride), tuple(padding), tuple(dilation), groups)
    fmt = memory_format(channels_last_weight)
    backend = _backend(x, weight_meta, groups)
    if backend is cpu:
        return cpu.dcs_grad_weight(*args, cols=cols, weight_format=fmt)
    return backend.dcs_grad_weight(*args, weight_format=fmt)


@dcs_conv2d_grad_weight.register_fake
def _(
    grad_out, x, weight_size, taps, stride, padding, dilation, groups, cols=None, channels_last_weight=False
):
    _load_backends_for(x)
    return _empty_nchw(weight_size, grad_out, channels_last_weight)


# Where x, weight and bias sit among the op's tensor inputs, the order of the autograd node's edges
# (``ctx.next_functions``); bias is absent when None, and taps come last.
_X_EDGE, _WEIGHT_EDGE, _BIAS_EDGE = 0, 1, 2


def _engine_uses_gradient(ctx, edge: int) -> bool:
    """Whether the backward pass now running will use the gradient flowing into edge ``edge``.

    ``ctx.needs_input_grad`` only says an input requires grad. ``torch.autograd.grad(loss, x)``, the
    call of every attack step, needs no weight gradient, and a native convolution skips that GEMM;
    this asks the engine, as ``torch.autograd.graph.register_multi_grad_hook`` does. Any doubt means
    yes: the engine refuses to answer for a leaf that ``autograd.grad`` captures (its gradient is
    wanted), and a context that is not a live autograd node (a compiler tracing the backward) has
    no edges to ask about.
    """
    try:
        node = ctx.next_functions[edge][0]
        return node is None or torch._C._will_engine_execute_node(node) is not False
    except (AttributeError, IndexError, RuntimeError):
        return True


def _setup_context(ctx, inputs, output):
    x, weight, bias, taps, stride, padding, dilation, groups = inputs
    cols = output[1]
    ctx.mark_non_differentiable(cols)
    ctx.set_materialize_grads(False)  # else backward gets a zero-filled gradient as large as cols
    ctx.save_for_backward(x, weight, taps, cols)
    ctx.conv = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out, _grad_cols):
    x, weight, taps, cols = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv
    grad_x = grad_w = grad_b = None
    if grad_out is None:  # grads are not materialised (see _setup_context)
        return grad_x, grad_w, grad_b, None, None, None, None, None
    if ctx.needs_input_grad[0] and _engine_uses_gradient(ctx, _X_EDGE):
        grad_x = dcs_conv2d_grad_input(
            grad_out, list(x.shape), _channels_last(x), weight, taps, stride, padding, dilation, groups
        )
    if ctx.needs_input_grad[1] and _engine_uses_gradient(ctx, _WEIGHT_EDGE):
        grad_w = dcs_conv2d_grad_weight(
            grad_out,
            x,
            list(weight.shape),
            taps,
            stride,
            padding,
            dilation,
            groups,
            cols,
            _channels_last(weight),
        )
    if ctx.has_bias and ctx.needs_input_grad[2] and _engine_uses_gradient(ctx, _BIAS_EDGE):
        grad_b = grad_out.sum((0, 2, 3))
    return grad_x, grad_w, grad_b, None, None, None, None, None


dcs_conv2d.register_autograd(_backward, setup_context=_setup_context)
