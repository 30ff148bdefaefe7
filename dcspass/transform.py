"""The pass: select convs by policy, check Eq. 12, rewrite them into DCS layers.

``transform(model, policy)`` works on a copy of the model, in four steps (DESIGN §2):

1. **Trace** the copy with torch.fx, every ``nn.Conv2d`` (subclasses included) and ``DCSConv2d`` a leaf,
   and list its convs in execution order as ``ConvSite``s: conv modules (counted once, at their first
   call) and ``F.conv2d`` call sites whose weight is a parameter. A model torch.fx cannot trace is
   handled by swapping modules in place instead, with a warning; its execution order comes from a
   forward-hook dry run.
2. **Select** with the policy (``dcspass.policies``); non-convertible convs are never selected.
3. **Check** every selected layer against Eq. 12 (``dcspass.bounds``) before anything is rewritten.
4. **Rewrite**: a selected conv module becomes a ``DCSConv2d`` under the same qualified name (so
   ``state_dict`` keys are unchanged); an ``F.conv2d`` call site becomes a call to a new ``DCSConv2d``
   submodule named after the graph node (``conv2d``, ``conv2d_1``, ...).

Padding and weights: the original kh x kw kernel is embedded in the k x k kernel at offset
``((k - kh) // 2, (k - kw) // 2)`` and the padding grows by the ring on each side (times the dilation),
so every output pixel sees the same input pixels as before plus the ring and output shapes are kept for
odd and even kernels alike. With ``init="embed"`` the ring starts at zero, so ``n = k*k`` computes what
the original did.
"""

from __future__ import annotations

import copy
import itertools
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import parametrize

from . import bounds
from .errors import BoundError, ConfigError
from .functional import normalize_padding, pair
from .layers import DCSConv2d, DCSConv2dSame
from .policies import ConvSite, PolicySpec, select

__all__ = [
    "Analysis",
    "ConvTracer",
    "analyse",
    "copy_model",
    "dcs_from_site",
    "dcs_kernel_size",
    "trace",
    "transform",
]

_CONV_FUNCTIONS = (F.conv2d, torch.conv2d)
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
DEFAULT_INPUT_HW = (64, 64)  # the dry-run input size for untraceable models without example_inputs


class ConvTracer(fx.Tracer):
    """A torch.fx tracer that keeps every conv (``nn.Conv2d`` and subclasses, ``DCSConv2d``) a leaf.

    Convs stay one ``call_module`` node each, so they keep their qualified names, and a conv subclass
    whose forward is not traceable (timm's ``Conv2dSame``) does not stop the trace.
    """

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (nn.Conv2d, DCSConv2d)) or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.GraphModule:
    """``model`` as a ``GraphModule`` traced by ``ConvTracer`` (sharing its submodules and parameters)."""
    tracer = ConvTracer()
    graph = tracer.trace(model)
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    # GraphModule rebuilds the module tree from plain nn.Modules holding only what the graph uses;
    # put the model's own children, parameters and buffers back, so that ``gm.layer2[0]`` still works
    # and the state_dict keys are exactly the model's.
    for name, child in model.named_children():
        setattr(gm, name, child)
    for name, param in model.named_parameters(recurse=False):
        setattr(gm, name, param)
    for name, buf in model.named_buffers(recurse=False):
        gm.register_buffer(name, buf, persistent=name not in model._non_persistent_buffers_set)
    gm.training = model.training
    return gm


@dataclass
class Analysis:
    """What the pass found: the (traced) model, its convs and the selection. Input of rewrite and plan.

    ``model`` is a ``GraphModule`` when ``traced``, else the module itself (``trace_error`` says why).
    ``kernel_sizes`` holds the DCS kernel size of every selected conv. ``edges`` are the conv-to-conv
    dataflow edges (conv names, ``"input"``, ``"output"``); untraced, the execution order as a chain.
    """

    model: nn.Module
    traced: bool
    trace_error: str
    sites: list[ConvSite]
    selected: list[ConvSite]
    refused: list[ConvSite]
    kernel_sizes: dict[str, int]
    edges: list[tuple[str, str]]


def analyse(
    model: nn.Module,
    policy: PolicySpec = "downsample",
    k: int | None = None,
    example_inputs: Any = None,
) -> Analysis:
    """Trace (or dry-run) ``model`` in place, list its convs and apply ``policy``. Does not rewrite."""
    try:
        gm = trace(model)
    except Exception as exc:  # torch.fx raises many types (TraceError, TypeError, RuntimeError, ...)
        first_line = (str(exc).strip().splitlines() or [""])[0]
        error = f"{type(exc).__name__}: {first_line}"
        sites = _sites_from_dry_run(model, example_inputs)
        chosen, refused = select(policy, sites)
        ks = {s.name: dcs_kernel_size(s, k) for s in chosen}
        return Analysis(model, False, error, sites, chosen, refused, ks, _chain(sites))
    sites = _sites_from_graph(gm)
    chosen, refused = select(policy, sites)
    ks = {s.name: dcs_kernel_size(s, k) for s in chosen}
    return Analysis(gm, True, "", sites, chosen, refused, ks, _dataflow_edges(gm, sites))


def transform(
    model: nn.Module,
    policy: PolicySpec = "downsample",
    n: int = 2,
    k: int | None = None,
    check_bounds: bool = True,
    eps_c: float = bounds.DEFAULT_EPS_C,
    eps_l: float = bounds.DEFAULT_EPS_L,
    init: str = "embed",
    example_inputs: Any = None,
) -> nn.Module:
    """A DCS version of ``model``: the convs ``policy`` selects become ``DCSConv2d`` with n taps of k x k.

    Args:
        model: any CNN; it and its parameters are left untouched (the pass works on a deep copy).
        policy: ``"downsample"``, ``"index:6"``, ``"name:<glob>"``, a callable ``(name, conv) -> bool``
            or a ``dcspass.policies.Policy`` (see ``dcspass.policies``).
        n: taps per forward in every selected layer.
        k: DCS kernel size; None means ``max(5, original kernel)`` per layer. Below a layer's original
            kernel it is a ``ConfigError``.
        check_bounds: check n against Eq. 12 for every selected layer first (``BoundError`` if outside);
            False runs outside the bound on purpose (ablations).
        eps_c, eps_l: the Eq. 12 tolerances (``dcspass.bounds.interval``).
        init: ``"embed"`` (original kernel at the centre, zero ring: ``n = k*k`` is the original model)
            or ``"fresh"`` (the whole k x k kernel re-initialised, for training from scratch).
        example_inputs: a tensor or tuple of tensors for the forward-hook dry run, used only when the
            model cannot be traced; default ``[1, C, 64, 64]`` with C the first conv's in_channels.

    Returns:
        A ``torch.fx.GraphModule`` when the model traces, else the copied model with modules swapped.

    Raises:
        PolicyError: the policy does not parse, refers to a missing index, or selects nothing.
        BoundError: a selected layer's n is outside its Eq. 12 interval (with ``check_bounds``).
        ConfigError: bad n, k or init.
    """
    if init not in ("embed", "fresh"):
        raise ConfigError(f"init must be 'embed' or 'fresh', got {init!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"n must be a positive int (taps per forward), got {n!r}")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise ConfigError(f"k must be a positive int or None (max(5, original kernel)), got {k!r}")
    work = copy_model(model)
    analysis = analyse(work, policy, k, example_inputs)
    if not analysis.traced:
        warnings.warn(
            f"dcspass.transform: torch.fx cannot trace {type(model).__name__} ({analysis.trace_error}); "
            "swapping the selected conv modules in place instead. Execution order (for index: policies) "
            "comes from a forward-hook dry run, and F.conv2d call sites are not rewritten.",
            stacklevel=2,
        )
    if analysis.refused:
        names = ", ".join(f"{s.name} ({s.reason})" for s in analysis.refused)
        warnings.warn(
            f"dcspass.transform: policy {policy!r} matched non-convertible convs, left as they are: {names}",
            stacklevel=2,
        )
    _check_selection(analysis, n, check_bounds, eps_c, eps_l)
    return _rewrite(analysis, n, init)


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` to rewrite, with a message that says what to do if it cannot be copied."""
    try:
        return copy.deepcopy(model)
    except Exception as exc:
        raise ConfigError(
            f"dcspass.transform works on a deep copy of the model, and copy.deepcopy({type(model).__name__}) "
            f"failed ({type(exc).__name__}: {exc}); make the model deep-copyable"
        ) from exc


def dcs_kernel_size(site: ConvSite, k: int | None) -> int:
    """The DCS kernel size for a conv: ``k``, or ``max(5, original kernel)`` when k is None."""
    original = max(site.kernel_size)
    if k is None:
        return max(5, original)
    if k < original:
        raise ConfigError(
            f"layer {site.name!r}: k={k} is smaller than its {site.kernel_size[0]}x{site.kernel_size[1]} "
            f"kernel; the DCS kernel must contain the original one (use k >= {original}, or k=None)"
        )
    return k


def _check_selection(analysis: Analysis, n: int, check_bounds: bool, eps_c: float, eps_l: float) -> None:
    """Every check on the selection, before any rewrite: n fits the kernel, and Eq. 12."""
    for site in analysis.selected:
        k = analysis.kernel_sizes[site.name]
        if n > k * k:
            raise ConfigError(f"layer {site.name!r}: n={n} exceeds the k*k={k * k} taps of a {k}x{k} kernel")
    if not check_bounds:
        return
    failing = [
        s for s in analysis.selected
        if not bounds.admissible(n, s.stride, analysis.kernel_sizes[s.name], eps_c, eps_l)
    ]
    if not failing:
        return
    first = failing[0]
    try:
        bounds.check(first.name, n, first.stride, analysis.kernel_sizes[first.name], eps_c, eps_l)
    except BoundError as exc:
        if len(failing) == 1:
            raise
        others = ", ".join(s.name for s in failing[1:])
        raise BoundError(f"{exc} Also outside their interval: {others}.") from None


def _rewrite(analysis: Analysis, n: int, init: str) -> nn.Module:
    root = analysis.model
    for site in analysis.selected:
        layer = dcs_from_site(site, analysis.kernel_sizes[site.name], n, init)
        if site.module is not None:
            _replace_submodule(root, site.name, layer)
        else:
            _replace_conv_call(root, site, layer)
    if analysis.traced:
        root.graph.lint()
        root.recompile()
    return root


def _replace_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent_name), leaf, new)


def _replace_conv_call(gm: fx.GraphModule, site: ConvSite, layer: DCSConv2d) -> None:
    """``y = F.conv2d(x, self.w, ...)`` -> ``y = self.<site.name>(x)``; drop weights nothing else reads."""
    node = site.node
    args = _conv_call_args(node)
    gm.add_submodule(site.name, layer)
    with gm.graph.inserting_before(node):
        call = gm.graph.call_module(site.name, (args["input"],))
    call.meta = dict(node.meta)
    node.replace_all_uses_with(call)
    gm.graph.erase_node(node)
    for param_node in (args["weight"], args["bias"]):
        if isinstance(param_node, fx.Node) and not param_node.users:
            target = param_node.target
            gm.graph.erase_node(param_node)
            if not any(m.op == "get_attr" and m.target == target for m in gm.graph.nodes):
                owner_name, _, attr = target.rpartition(".")
                delattr(gm.get_submodule(owner_name), attr)


def dcs_from_site(site: ConvSite, k: int, n: int, init: str = "embed") -> DCSConv2d:
    """The ``DCSConv2d`` that replaces a conv: same channels, stride, dilation, groups, padding mode,
    padding grown by the ring so each output pixel reads the same window; weights per ``init``."""
    weight, bias = _site_parameters(site)
    kh, kw = site.kernel_size
    dh, dw = site.dilation
    top_off, left_off = (k - kh) // 2, (k - kw) // 2
    left, right, top, bottom = _explicit_padding(site)
    padding = (
        left + dw * left_off,
        right + dw * (k - kw - left_off),
        top + dh * top_off,
        bottom + dh * (k - kh - top_off),
    )
    cls: Callable[..., DCSConv2d] = DCSConv2d
    extra: dict[str, Any] = {}
    if site.tf_same:
        cls, extra = DCSConv2dSame, {"same_kernel": site.kernel_size}
    layer = cls(
        site.in_channels, site.out_channels, k, n, stride=site.stride, padding=padding,
        dilation=site.dilation, groups=site.groups, bias=bias is not None, padding_mode=site.padding_mode,
        device=weight.device, dtype=weight.dtype, **extra,
    )
    with torch.no_grad():
        if init == "embed":
            layer.weight.zero_()
            layer.weight[:, :, top_off:top_off + kh, left_off:left_off + kw] = weight
            if bias is not None:
                layer.bias.copy_(bias)
    layer.weight.requires_grad_(weight.requires_grad)
    if bias is not None:
        layer.bias.requires_grad_(bias.requires_grad)
    layer.train(site.module.training if site.module is not None else True)
    return layer


def _site_parameters(site: ConvSite) -> tuple[torch.Tensor, torch.Tensor | None]:
    if site.module is not None:
        return site.module.weight, site.module.bias
    return site.node.meta["dcspass_weight"], site.node.meta["dcspass_bias"]


def _explicit_padding(site: ConvSite) -> tuple[int, int, int, int]:
    """The conv's own padding as ``(left, right, top, bottom)``; ``"same"`` made explicit as PyTorch does."""
    padding = site.padding
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        total_h = site.dilation[0] * (site.kernel_size[0] - 1)
        total_w = site.dilation[1] * (site.kernel_size[1] - 1)
        return (total_w // 2, total_w - total_w // 2, total_h // 2, total_h - total_h // 2)
    return normalize_padding(tuple(padding) if isinstance(padding, Sequence) else padding)


# ---------------------------------------------------------------------------------------------- discovery


def _convertibility(conv: nn.Conv2d) -> tuple[bool, str, bool]:
    """``(convertible, reason if not, uses TF-"SAME" padding)`` for a conv module."""
    cls = type(conv)
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


def _site_from_module(index: int, name: str, conv: nn.Conv2d) -> ConvSite:
    convertible, reason, tf_same = _convertibility(conv)
    return ConvSite(
        index=index, name=name, kernel_size=tuple(conv.kernel_size), stride=tuple(conv.stride),
        padding=conv.padding, dilation=tuple(conv.dilation), groups=conv.groups,
        in_channels=conv.in_channels, out_channels=conv.out_channels, padding_mode=conv.padding_mode,
        tf_same=tf_same, module=conv, convertible=convertible, reason=reason,
    )


def _conv_call_args(node: fx.Node) -> dict[str, Any]:
    args = dict(_CONV_DEFAULTS)
    args.update(zip(_CONV_ARGS, node.args, strict=False))
    args.update(node.kwargs)
    return args


def _fetch_tensor(gm: fx.GraphModule, node: Any) -> torch.Tensor | None:
    if not (isinstance(node, fx.Node) and node.op == "get_attr"):
        return None
    owner_name, _, attr = node.target.rpartition(".")
    value = getattr(gm.get_submodule(owner_name), attr, None)
    return value if isinstance(value, torch.Tensor) else None


def _site_from_call(gm: fx.GraphModule, index: int, node: fx.Node, taken: set[str]) -> ConvSite | None:
    """A ConvSite for ``F.conv2d(x, self.w, ...)``, or None when the weight is computed in forward."""
    args = _conv_call_args(node)
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
        index=index, name=name, kernel_size=tuple(weight.shape[-2:]), stride=stride, padding=padding,
        dilation=dilation, groups=groups, in_channels=weight.shape[1] * groups,
        out_channels=weight.shape[0], node=node, convertible=not reason, reason=reason,
    )


def _sites_from_graph(gm: fx.GraphModule) -> list[ConvSite]:
    """Convs in the order the graph runs them (a module called twice counts once, at its first call)."""
    sites: list[ConvSite] = []
    seen: set[str] = set()
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target not in seen:
            module = gm.get_submodule(node.target)
            if isinstance(module, nn.Conv2d):
                seen.add(node.target)
                sites.append(_site_from_module(len(sites) + 1, node.target, module))
        elif node.op == "call_function" and node.target in _CONV_FUNCTIONS:
            site = _site_from_call(gm, len(sites) + 1, node, seen)
            if site is not None:
                sites.append(site)
    for site in sites:
        if site.module is not None:
            site.node = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == site.name)
    return sites


def _sites_from_dry_run(model: nn.Module, example_inputs: Any) -> list[ConvSite]:
    """Convs in the order a forward pass calls them, from hooks on a no-grad eval-mode dry run."""
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return []
    if example_inputs is None:
        first = convs[0][1]
        example_inputs = (torch.zeros(1, first.in_channels, *DEFAULT_INPUT_HW,
                                      dtype=first.weight.dtype, device=first.weight.device),)
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


def _dataflow_edges(gm: fx.GraphModule, sites: list[ConvSite]) -> list[tuple[str, str]]:
    """Edges ``a -> b``: conv b reads (through non-conv ops only) what conv a wrote.

    ``"input"`` and ``"output"`` stand for the model's inputs and outputs.
    """
    conv_of = {s.node: s.name for s in sites if s.node is not None}
    # Module sites share one node per call; map every call of the module to its name.
    modules = {s.name for s in sites if s.module is not None}
    sources: dict[fx.Node, frozenset[str]] = {}
    edges: set[tuple[str, str]] = set()
    for node in gm.graph.nodes:
        upstream = frozenset().union(*(sources.get(a, frozenset()) for a in node.all_input_nodes))
        if node.op == "placeholder":
            sources[node] = frozenset({"input"})
            continue
        name = conv_of.get(node)
        if name is None and node.op == "call_module" and node.target in modules:
            name = node.target
        if name is not None:
            edges.update((u, name) for u in upstream)
            sources[node] = frozenset({name})
        elif node.op == "output":
            edges.update((u, "output") for u in upstream)
        else:
            sources[node] = upstream
    return sorted(edges)



def _chain(sites: list[ConvSite]) -> list[tuple[str, str]]:
    """Without a graph, the best dataflow guess: input -> convs in execution order -> output."""
    names = ["input", *(s.name for s in sites), "output"]
    return list(itertools.pairwise(names))
