"""Rewriting selected convs into DCS layers: build the ``DCSConv2d`` for a conv, then put it in place.

A conv module is swapped on its parent under the same attribute name, so the model keeps its class,
methods, hooks and train/eval behaviour, and its ``state_dict`` keys. A functional ``F.conv2d`` call
site has no module to swap: the traced graph's call becomes a call to a new ``DCSConv2d`` submodule,
and the result is that ``GraphModule``; the model is traced in train and in eval mode, and where the
two graphs differ (``self.training`` branches outside leaf modules) the result is a
``ModeSwitchingGraphs`` that runs the one the model's mode selects.

Padding and weights: the original kh x kw kernel sits in the k x k kernel at offset
``((k - kh) // 2, (k - kw) // 2)`` and the padding grows by the ring on each side (times the dilation),
so every output pixel reads the same input pixels as before plus the ring, and output shapes are kept
for odd and even kernels alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn

from .discovery import conv_call_args, is_conv_call
from .errors import ConfigError
from .functional import normalize_padding, same_padding
from .layers import DCSConv2d, DCSConv2dSame
from .policies import ConvSite
from .tracing import ModeSwitchingGraphs, trace_in_mode

__all__ = ["FROZEN_MODE", "dcs_from_site", "dcs_kernel_size", "rewrite", "zero_ring_draw_probability"]


# The key in a rewritten GraphModule's ``meta`` naming the mode ("train" / "eval") whose
# ``self.training`` branches it keeps, when it could not get a graph per mode.
FROZEN_MODE = "dcspass_frozen_mode"


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


def zero_ring_draw_probability(kernel_size: tuple[int, int], k: int, n: int) -> float:
    """The chance that n taps drawn from a k x k kernel all land on the zero ring of an embedded kernel.

    The ring has ``k*k - kh*kw`` positions; 0 when it has fewer than n.
    """
    ring = k * k - kernel_size[0] * kernel_size[1]
    return math.comb(ring, n) / math.comb(k * k, n)


def rewrite(
    model: nn.Module,
    graph: fx.GraphModule | None,
    sites: list[ConvSite],
    kernel_sizes: dict[str, int],
    n: int,
    init: str,
) -> nn.Module:
    """Replace every conv of ``sites`` by its DCS layer; return the rewritten model.

    ``model`` itself, with its conv modules swapped, unless some site is an ``F.conv2d`` call site of
    ``graph`` (the model's trace): then a rewritten trace of the model, in which those calls call their
    DCS layers (``_rewrite_call_sites``).
    """
    layers = {site.name: dcs_from_site(site, kernel_sizes[site.name], n, init) for site in sites}
    for site in sites:
        if site.module is not None:
            parent_name, _, leaf = site.name.rpartition(".")
            setattr(model.get_submodule(parent_name), leaf, layers[site.name])
    calls = [site for site in sites if site.module is None]
    if not calls:
        return model
    for site in calls:
        layers[site.name].train(model.training)
    return _rewrite_call_sites(model, graph, calls, layers)


def _rewrite_call_sites(
    model: nn.Module, graph: fx.GraphModule, calls: list[ConvSite], layers: dict[str, DCSConv2d]
) -> nn.Module:
    """The model traced in each mode, each graph's ``F.conv2d`` call sites of ``calls`` calling their
    DCS layer (shared by both graphs): one ``GraphModule`` when the two graphs are the same, else a
    ``ModeSwitchingGraphs`` holding both, so ``self.training`` branches outside leaf modules (dropout,
    stochastic depth) still follow ``.train()`` / ``.eval()``.

    A call site is matched across the graphs by its weight and its rank among the calls on that
    weight. Where the two modes call the selected weights differently, there is no such match: the
    trace in the current mode alone is rewritten, and keeps that mode's branches; its
    ``meta[FROZEN_MODE]`` names the mode.
    """
    weights = {conv_call_args(site.node)["weight"].target for site in calls}
    key_of = {node: key for key, node in _calls_by_key(graph, weights).items()}
    keys = {site.name: key_of[site.node] for site in calls}
    graphs = {mode: trace_in_mode(model, mode) for mode in (model.training, not model.training)}
    found = {mode: _calls_by_key(gm, weights) for mode, gm in graphs.items()}
    if found[True].keys() != found[False].keys():  # no one-to-one match: the trace in the current mode
        graphs = {model.training: graphs[model.training]}
        graphs[model.training].meta[FROZEN_MODE] = "train" if model.training else "eval"
    replaced: set[str] = set()
    for mode, gm in graphs.items():
        for site in calls:
            replaced |= _replace_conv_call(gm, found[mode][keys[site.name]], site.name, layers[site.name])
    _drop_unread_weights(list(graphs.values()), replaced)
    for gm in graphs.values():
        gm.graph.lint()
        gm.recompile()
    current = graphs[model.training]
    if len(graphs) == 1 or graphs[not model.training].code == current.code:
        return current
    return ModeSwitchingGraphs(current, graphs)


def _calls_by_key(gm: fx.GraphModule, weights: set[str]) -> dict[tuple[str, int], fx.Node]:
    """The graph's F.conv2d calls on any of ``weights``, keyed by ``(weight attribute, rank of the call
    among the graph's calls on that weight)``: the key that matches a call across two traces."""
    ranks: dict[str, int] = {}
    by_key = {}
    for node in filter(is_conv_call, gm.graph.nodes):
        weight = conv_call_args(node)["weight"]
        if isinstance(weight, fx.Node) and weight.op == "get_attr" and weight.target in weights:
            by_key[weight.target, ranks.get(weight.target, 0)] = node
            ranks[weight.target] = ranks.get(weight.target, 0) + 1
    return by_key


def _replace_conv_call(gm: fx.GraphModule, node: fx.Node, name: str, layer: DCSConv2d) -> set[str]:
    """``y = F.conv2d(x, self.w, ...)`` -> ``y = self.<name>(x)``; returns the attributes the call read
    (``w`` and any bias), whose nodes go once nothing else uses them."""
    args = conv_call_args(node)
    gm.add_submodule(name, layer)
    with gm.graph.inserting_before(node):
        call = gm.graph.call_module(name, (args["input"],))
    call.meta = dict(node.meta)
    node.replace_all_uses_with(call)
    gm.graph.erase_node(node)
    read = set()
    for param_node in (args["weight"], args["bias"]):
        if isinstance(param_node, fx.Node):
            read.add(param_node.target)
            if not param_node.users:
                gm.graph.erase_node(param_node)
    return read


def _drop_unread_weights(graphs: list[fx.GraphModule], targets: set[str]) -> None:
    """Delete the attributes ``targets`` (rewritten calls' weights and biases, which the DCS layers now
    own) that no graph reads any more, from each graph's module tree: the containers the graphs share
    with the model and each graph's own root."""
    read = {node.target for gm in graphs for node in gm.graph.nodes if node.op == "get_attr"}
    for target in sorted(targets - read):
        owner_name, _, attr = target.rpartition(".")
        for gm in graphs:
            owner = gm.get_submodule(owner_name)
            if hasattr(owner, attr):
                delattr(owner, attr)


def dcs_from_site(site: ConvSite, k: int, n: int, init: str = "fresh") -> DCSConv2d:
    """The ``DCSConv2d`` that replaces a conv: same channels, stride, dilation, groups, padding mode,
    padding grown by the ring so each output pixel reads the same window; weights per ``init``
    (``"fresh"``: re-initialised as ``nn.Conv2d`` would; ``"embed"``: the original kernel at the
    centre of a zero ring, bias copied). The weight keeps the conv weight's memory format (channels_last
    or contiguous)."""
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
        site.in_channels,
        site.out_channels,
        k,
        n,
        stride=site.stride,
        padding=padding,
        dilation=site.dilation,
        groups=site.groups,
        bias=bias is not None,
        padding_mode=site.padding_mode,
        device=weight.device,
        dtype=weight.dtype,
        **extra,
    )
    with torch.no_grad():
        if init == "embed":
            layer.weight.zero_()
            layer.weight[:, :, top_off : top_off + kh, left_off : left_off + kw] = weight
            if bias is not None:
                layer.bias.copy_(bias)
    layer.to(memory_format=_memory_format(weight))
    layer.weight.requires_grad_(weight.requires_grad)
    if bias is not None:
        layer.bias.requires_grad_(bias.requires_grad)
    if site.module is not None:
        layer.train(site.module.training)
    return layer


def _memory_format(weight: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a 4-d weight laid out that way (as ``model.to(memory_format=
    torch.channels_last)`` leaves it), else ``torch.contiguous_format``.

    Read from the strides, not ``is_contiguous``: a 1x1 kernel in channels_last is both.
    """
    if weight.dim() != 4:
        return torch.contiguous_format
    channels_last = torch.empty(weight.shape, device="meta", memory_format=torch.channels_last).stride()
    plain = torch.empty(weight.shape, device="meta").stride()
    return torch.channels_last if weight.stride() == channels_last != plain else torch.contiguous_format


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
        return same_padding(site.kernel_size, site.dilation)
    return normalize_padding(tuple(padding) if isinstance(padding, Sequence) else padding)
