"""Finding a model's convolutions, in execution order, and whether each can become a DCS layer.

``discover(model)`` traces the model with torch.fx (convs as leaves) and lists, in graph order, the conv
modules (counted once, at their first call) and the ``F.conv2d`` call sites whose weight is a parameter
or buffer. DCS layers and torch.ao quantized convs are listed too, as non-convertible: a conv's index
is its place among all of them, so it does not shift when a model is transformed. A model torch.fx
cannot trace is run once instead, with forward hooks on its conv modules, to learn their order; its
functional call sites stay unseen.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import parametrize

from .errors import ConfigError
from .functional import pair
from .layers import DCSConv2d
from .policies import ConvSite
from .tracing import trace

__all__ = ["DEFAULT_INPUT_HW", "Discovery", "conv_call_args", "discover", "is_conv_call"]

_CONV_FUNCTIONS = (F.conv2d, torch.conv2d)
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
DEFAULT_INPUT_HW = (64, 64)  # the dry-run input size for untraceable models without example_inputs

try:  # torch.ao's quantized convs hold a packed integer weight, not an nn.Conv2d's float Parameter
    from torch.ao.nn.quantized import Conv2d as _QuantizedConv2d

    _QUANTIZED_CONVS: tuple[type, ...] = (_QuantizedConv2d,)
except ImportError:  # a torch without torch.ao quantization has no such convs to name
    _QUANTIZED_CONVS = ()
_CONV_MODULES = (nn.Conv2d, DCSConv2d, *_QUANTIZED_CONVS)


@dataclass
class Discovery:
    """A model's convs in execution order, and how they were found.

    ``graph`` is the model traced by ``dcspass.tracing.trace`` (sharing the model's modules and
    parameters), or None when torch.fx could not trace it (``trace_error`` says why, in one line) and
    the order came from a forward-hook dry run.
    """

    sites: list[ConvSite]
    graph: fx.GraphModule | None
    trace_error: str = ""

    @property
    def traced(self) -> bool:
        return self.graph is not None


def discover(model: nn.Module, example_inputs: Any = None) -> Discovery:
    """The convs of ``model`` (which is not modified) as ``ConvSite``s in execution order.

    ``example_inputs`` (a tensor or tuple of tensors) feeds the dry run of a model torch.fx cannot
    trace; default ``[1, C, 64, 64]`` zeros with C the first conv's ``in_channels``.
    """
    try:
        gm = trace(model)
    except Exception as exc:  # torch.fx raises many types (TraceError, TypeError, RuntimeError, ...)
        first_line = (str(exc).strip().splitlines() or [""])[0]
        reason = f"{type(exc).__name__}: {first_line}"
        return Discovery(_sites_from_dry_run(model, example_inputs), None, reason)
    return Discovery(_sites_from_graph(gm), gm)


def is_conv_call(node: fx.Node) -> bool:
    """Whether ``node`` is a functional ``F.conv2d`` / ``torch.conv2d`` call."""
    return node.op == "call_function" and node.target in _CONV_FUNCTIONS


def conv_call_args(node: fx.Node) -> dict[str, Any]:
    """The arguments of an ``F.conv2d`` call node by name (``input``, ``weight``, ...), defaults filled."""
    args = dict(_CONV_DEFAULTS)
    args.update(zip(_CONV_ARGS, node.args, strict=False))
    args.update(node.kwargs)
    return args


def _convertibility(conv: nn.Module) -> tuple[bool, str, bool]:
    """``(convertible, reason if not, uses TF-"SAME" padding)`` for a conv module."""
    cls = type(conv)
    if isinstance(conv, DCSConv2d):
        k = conv.kernel_size
        return False, f"already a DCS layer (n={conv.n} of {k}x{k})", False
    if isinstance(conv, _QUANTIZED_CONVS):
        return (
            False,
            f"{cls.__name__} is a torch.ao quantized conv (integer weight); transform the float model, "
            "then quantize",
            False,
        )
    timm_layers = sys.modules.get("timm.layers")
    tf_same = timm_layers is not None and isinstance(conv, getattr(timm_layers, "Conv2dSame", ()))
    if isinstance(conv.weight, nn.parameter.UninitializedParameter):
        return False, "lazy conv not initialised yet; run one forward first", False
    if parametrize.is_parametrized(conv):
        return False, "its weight is parametrized (e.g. weight/spectral norm)", False
    if conv._forward_pre_hooks or conv._forward_hooks:
        return False, "it has forward hooks, which DCS would drop", False
    if tf_same:
        return True, "", True
    if cls.forward is not nn.Conv2d.forward or cls._conv_forward is not nn.Conv2d._conv_forward:
        return False, f"{cls.__name__} overrides forward (it may change the weight)", False
    return True, "", False


def _site_from_module(index: int, name: str, conv: nn.Module) -> ConvSite:
    """The site of a conv module: an ``nn.Conv2d``, a DCS layer (kept in the count, so indices do not
    shift on a transformed model) or a torch.ao quantized conv; the last two are non-convertible."""
    convertible, reason, tf_same = _convertibility(conv)
    return ConvSite(
        index=index,
        name=name,
        kernel_size=pair(conv.kernel_size, "kernel_size"),
        stride=tuple(conv.stride),
        padding=conv.padding,
        dilation=tuple(conv.dilation),
        groups=conv.groups,
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        padding_mode=conv.padding_mode,
        tf_same=tf_same,
        module=conv,
        convertible=convertible,
        reason=reason,
        already_dcs=isinstance(conv, DCSConv2d),
    )


def _fetch_tensor(gm: fx.GraphModule, node: Any) -> torch.Tensor | None:
    if not (isinstance(node, fx.Node) and node.op == "get_attr"):
        return None
    owner_name, _, attr = node.target.rpartition(".")
    value = getattr(gm.get_submodule(owner_name), attr, None)
    return value if isinstance(value, torch.Tensor) else None


def _site_from_call(gm: fx.GraphModule, index: int, node: fx.Node, taken: set[str]) -> ConvSite | None:
    """A ConvSite for ``F.conv2d(x, self.w, ...)``, or None when the weight is computed in forward."""
    args = conv_call_args(node)
    weight = _fetch_tensor(gm, args["weight"])
    if weight is None or weight.dim() != 4:
        return None
    bias = None if args["bias"] is None else _fetch_tensor(gm, args["bias"])
    name = node.name
    while name in taken or hasattr(gm, name):
        name += "_dcs"
    taken.add(name)
    node.meta["dcspass_weight"], node.meta["dcspass_bias"] = weight, bias
    constant = all(not isinstance(args[a], fx.Node) for a in ("stride", "padding", "dilation", "groups"))
    bias_ok = args["bias"] is None or bias is not None
    reason = "" if constant and bias_ok else "stride/padding/dilation/groups or bias computed in forward"
    groups = args["groups"] if isinstance(args["groups"], int) else 1
    stride = pair(args["stride"], "stride") if constant else (1, 1)
    dilation = pair(args["dilation"], "dilation") if constant else (1, 1)
    padding = args["padding"] if constant else 0
    if isinstance(padding, int):
        padding = (padding, padding)
    return ConvSite(
        index=index,
        name=name,
        kernel_size=tuple(weight.shape[-2:]),
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        in_channels=weight.shape[1] * groups,
        out_channels=weight.shape[0],
        node=node,
        convertible=not reason,
        reason=reason,
    )


def _sites_from_graph(gm: fx.GraphModule) -> list[ConvSite]:
    """Convs in the order the graph runs them (a module called twice counts once, at its first call)."""
    sites: list[ConvSite] = []
    seen: set[str] = set()
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target not in seen:
            module = gm.get_submodule(node.target)
            if isinstance(module, _CONV_MODULES):
                seen.add(node.target)
                site = _site_from_module(len(sites) + 1, node.target, module)
                site.node = node
                sites.append(site)
        elif is_conv_call(node):
            site = _site_from_call(gm, len(sites) + 1, node, seen)
            if site is not None:
                sites.append(site)
    return sites


def _sites_from_dry_run(model: nn.Module, example_inputs: Any) -> list[ConvSite]:
    """Convs in the order a forward pass calls them, from hooks on a no-grad eval-mode dry run."""
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, _CONV_MODULES)]
    if not convs:
        return []
    if example_inputs is None:
        first = convs[0][1]
        # A quantized conv's weight is a method; its float input is a float32 tensor on the CPU.
        weight = first.weight if isinstance(first.weight, torch.Tensor) else torch.empty(0)
        example_inputs = (
            torch.zeros(1, first.in_channels, *DEFAULT_INPUT_HW, dtype=weight.dtype, device=weight.device),
        )
    elif isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    order: list[str] = []
    handles = []
    for name, conv in convs:

        def hook(module, args, output, name=name):
            if name not in order:
                order.append(name)

        handles.append(conv.register_forward_hook(hook))
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(*example_inputs)
    except Exception as exc:
        raise ConfigError(
            f"dcspass: {type(model).__name__} cannot be traced, and the dry run that orders its convs failed "
            f"({type(exc).__name__}: {exc}); pass example_inputs= with an input the model accepts"
        ) from exc
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    by_name = dict(convs)
    return [_site_from_module(i + 1, name, by_name[name]) for i, name in enumerate(order)]
