"""Rewriting selected convs into DCS layers: build the ``DCSConv2d`` for a conv, then put it in place.

A conv module is swapped on its parent under the same attribute name, so the model keeps its class,
methods, hooks and train/eval behaviour, and its ``state_dict`` keys. A functional ``F.conv2d`` call
site has no module to swap: the traced graph's call becomes a call to a new ``DCSConv2d`` submodule,
and the result is that ``GraphModule``.

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

from .discovery import conv_call_args
from .errors import ConfigError
from .functional import normalize_padding, same_padding
from .layers import DCSConv2d, DCSConv2dSame
from .policies import ConvSite

__all__ = ["dcs_from_site", "dcs_kernel_size", "rewrite", "zero_ring_draw_probability"]


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

    ``model`` itself, with its conv modules swapped, unless some site is an ``F.conv2d`` call site:
    then ``graph`` (the model's trace, sharing its modules) with those calls rewritten, linted and
    recompiled.
    """
    root = graph if any(s.module is None for s in sites) else model
    for site in sites:
        layer = dcs_from_site(site, kernel_sizes[site.name], n, init)
        if site.module is not None:
            parent_name, _, leaf = site.name.rpartition(".")
            setattr(root.get_submodule(parent_name), leaf, layer)
        else:
            layer.train(root.training)
            _replace_conv_call(root, site, layer)
    if root is graph:
        graph.graph.lint()
        graph.recompile()
    return root


def _replace_conv_call(gm: fx.GraphModule, site: ConvSite, layer: DCSConv2d) -> None:
    """``y = F.conv2d(x, self.w, ...)`` -> ``y = self.<site.name>(x)``; drop weights nothing else reads."""
    node = site.node
    args = conv_call_args(node)
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


def dcs_from_site(site: ConvSite, k: int, n: int, init: str = "fresh") -> DCSConv2d:
    """The ``DCSConv2d`` that replaces a conv: same channels, stride, dilation, groups, padding mode,
    padding grown by the ring so each output pixel reads the same window; weights per ``init``
    (``"fresh"``: re-initialised as ``nn.Conv2d`` would; ``"embed"``: the original kernel at the
    centre of a zero ring, bias copied)."""
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
    layer.weight.requires_grad_(weight.requires_grad)
    if bias is not None:
        layer.bias.requires_grad_(bias.requires_grad)
    if site.module is not None:
        layer.train(site.module.training)
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
        return same_padding(site.kernel_size, site.dilation)
    return normalize_padding(tuple(padding) if isinstance(padding, Sequence) else padding)
