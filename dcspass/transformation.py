"""``transform(model, policy)``: the pass that turns selected convs into DCS layers.

In five steps, each in its own module:

1. **Validate** the arguments (``dcspass.validation``) and deep-copy the model (unless ``inplace``).
2. **Discover** its convs in execution order (``dcspass.discovery``): torch.fx traces the model with
   convs as leaves (``dcspass.tracing``); a model it cannot trace is ordered by a forward-hook dry run.
3. **Select** with the policy (``dcspass.policies``); non-convertible convs are never selected.
4. **Check** every selected layer (n <= k*k, Eq. 12 from ``dcspass.bounds``) before anything changes.
5. **Rewrite** (``dcspass.rewrite``): each selected conv module is swapped for a ``DCSConv2d`` under the
   same qualified name, so the result keeps the model's class and its ``state_dict`` keys. Only a
   selected functional ``F.conv2d`` call site forces the result to be the rewritten fx ``GraphModule``
   (one per train/eval mode where the traced graph depends on it).
"""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from torch import fx, nn

from . import bounds
from .discovery import Discovery, conv_call_args, discover
from .errors import BoundError, ConfigError
from .policies import ConvSite, PolicySpec, select
from .rewrite import FROZEN_MODE, dcs_kernel_size, rewrite, zero_ring_draw_probability
from .tracing import ModeSwitchingGraphs
from .validation import check_k, check_model, check_n

__all__ = ["Analysis", "analyse", "check_tap_counts", "lone_conv_container", "transform"]

INITS = ("fresh", "embed")


@dataclass
class Analysis:
    """What the pass learns before rewriting: the convs found, the selection, each one's DCS kernel size.

    ``refused`` are the non-convertible convs the policy matched (left as they are).
    """

    found: Discovery
    selected: list[ConvSite]
    refused: list[ConvSite]
    kernel_sizes: dict[str, int]


def analyse(
    model: nn.Module,
    policy: PolicySpec = "downsample",
    k: int | None = None,
    example_inputs: Any = None,
) -> Analysis:
    """Discover ``model``'s convs and apply ``policy``; ``model`` is not modified."""
    found = discover(model, example_inputs)
    chosen, refused = select(policy, found.sites)
    return Analysis(found, chosen, refused, {s.name: dcs_kernel_size(s, k) for s in chosen})


def transform(
    model: nn.Module,
    policy: PolicySpec = "downsample",
    n: int = 2,
    k: int | None = None,
    check_bounds: bool = True,
    eps_c: float = bounds.DEFAULT_EPS_C,
    eps_l: float = bounds.DEFAULT_EPS_L,
    init: str = "fresh",
    example_inputs: Any = None,
    inplace: bool = False,
) -> nn.Module:
    """A DCS version of ``model``: the convs ``policy`` selects become ``DCSConv2d`` with n taps of k x k.

    The result is a deep copy of ``model`` of the same class (``inplace=True``: ``model`` itself), with
    each selected conv module replaced under its qualified name: ``state_dict`` keys, methods, hooks on
    containers and train/eval behaviour (dropout, stochastic depth) are kept. The one exception: when a
    selected conv is a functional ``F.conv2d(x, self.w, ...)`` call site there is no module to swap, and
    the result is a ``torch.fx.GraphModule`` (the traced copy, the call replaced by a ``DCSConv2d``
    submodule named after the graph node); it warns, naming the call site, because a GraphModule has
    only ``forward``. A traced graph freezes the ``self.training`` branches it meets (``F.dropout(x, p,
    self.training)``, functional stochastic depth), so the model is traced in both modes; where the two
    graphs differ, the result is a ``dcspass.tracing.ModeSwitchingGraphs`` holding both (sharing every
    module and parameter), which runs the one ``self.training`` selects.

    Args:
        model: an ``nn.Module`` instance; untouched unless ``inplace``.
        policy: ``"downsample"``, ``"index:6"``, ``"name:<glob>"``, a callable ``(name, conv) -> bool``
            or a ``dcspass.policies.Policy`` (see ``dcspass.policies``).
        n: taps per forward in every selected layer.
        k: DCS kernel size; None means ``max(5, original kernel)`` per layer. Below a layer's original
            kernel it is a ``ConfigError``.
        check_bounds: check n against Eq. 12 for every selected layer first (``BoundError`` if outside);
            False runs outside the bound on purpose (ablations).
        eps_c, eps_l: the Eq. 12 tolerances (``dcspass.bounds.interval``).
        init: ``"fresh"`` (the whole k x k kernel re-initialised as ``nn.Conv2d`` would, for training;
            the rest of the model keeps its weights) or ``"embed"`` (original kernel at the centre of a
            zero ring: with ``n = k*k`` the result computes what ``model`` did; for fine-tuning). With
            ``"embed"`` it warns, naming the layers, when a draw of n taps can read only the zero ring.
        example_inputs: a tensor or tuple of tensors for the forward-hook dry run, used only when the
            model cannot be traced; default ``[1, C, 64, 64]`` with C the first conv's in_channels.
        inplace: rewrite ``model`` itself instead of a deep copy (as torchao's ``quantize_``); it is
            checked completely before anything changes. Not possible with a selected ``F.conv2d`` site.

    Returns:
        The rewritten model: ``type(model)``, or a ``GraphModule`` / ``ModeSwitchingGraphs`` as above.
        A ``model`` that is itself one ``nn.Conv2d`` the policy selects comes back as its ``DCSConv2d``.

    Raises:
        ModelError: ``model`` is not an ``nn.Module`` (a function, a string, a state dict, ...).
        PolicyError: the policy does not parse, refers to a missing index, or selects nothing.
        BoundError: a selected layer's n is outside its Eq. 12 interval (with ``check_bounds``).
        ConfigError: bad n, k or init; ``inplace`` with a selected ``F.conv2d`` call site, or with a
            bare ``nn.Conv2d``.
    """
    check_model(model, "dcspass.transform")
    if isinstance(model, nn.Conv2d):
        if inplace:
            raise ConfigError(
                f"inplace=True cannot turn the {type(model).__name__} passed as the model into a DCSConv2d: "
                "a module cannot change its class in place; call transform without inplace and use the "
                "layer it returns"
            )
        kwargs = dict(n=n, k=k, check_bounds=check_bounds, eps_c=eps_c, eps_l=eps_l, init=init)
        return transform(lone_conv_container(model), policy, example_inputs=example_inputs, **kwargs)[0]
    if init not in INITS:
        raise ConfigError(f"init must be 'fresh' or 'embed', got {init!r}")
    check_n(n)
    check_k(k)
    work = model if inplace else _copy_model(model)
    analysis = analyse(work, policy, k, example_inputs)
    if not analysis.found.traced:
        warnings.warn(
            f"dcspass.transform: torch.fx cannot trace {type(model).__name__} "
            f"({analysis.found.trace_error}); the execution order (for index: policies) comes from a "
            "forward-hook dry run, and F.conv2d call sites are not found. The selected conv modules are "
            "swapped as usual.",
            stacklevel=2,
        )
    if analysis.refused:
        names = ", ".join(f"{s.name} ({s.reason})" for s in analysis.refused)
        warnings.warn(
            f"dcspass.transform: policy {policy!r} matched non-convertible convs, left as they are: {names}",
            stacklevel=2,
        )
    _check_selection(analysis, n, check_bounds, eps_c, eps_l)
    calls = [s for s in analysis.selected if s.module is None]
    if calls and inplace:
        raise ConfigError(
            f"inplace=True cannot rewrite the F.conv2d call site(s) {_call_sites(calls)}: they have no "
            f"module to swap in {type(model).__name__}; use inplace=False (the result is then a "
            "GraphModule), make the call an nn.Conv2d module, or leave it out of the policy"
        )
    if init == "embed":
        _warn_zero_ring(analysis, n)
    result = rewrite(work, analysis.found.graph, analysis.selected, analysis.kernel_sizes, n, init)
    if calls:
        _warn_graph_result(model, result, calls)
    return result


def lone_conv_container(model: nn.Module) -> nn.Module:
    """A model that is itself one conv, as the one layer (named ``conv``) of an ``nn.Sequential``;
    any other model as it is. Traced as the root, a conv would be its own ``F.conv2d`` call site."""
    return nn.Sequential(OrderedDict(conv=model)) if isinstance(model, nn.Conv2d) else model


def _copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` to rewrite, with a message that says what to do if it cannot be copied."""
    try:
        return copy.deepcopy(model)
    except Exception as exc:
        raise ConfigError(
            f"dcspass.transform works on a deep copy of the model, and copy.deepcopy({type(model).__name__}) "
            f"failed ({type(exc).__name__}: {exc}); make the model deep-copyable, or pass inplace=True"
        ) from exc


def check_tap_counts(analysis: Analysis, n: int) -> None:
    """``ConfigError`` unless n fits the k*k taps of every selected layer: ``check_bounds=False`` does not
    lift this one (``plan`` reports it as the refusal it is)."""
    for site in analysis.selected:
        check_n(n, analysis.kernel_sizes[site.name], layer=site.name)


def _check_selection(analysis: Analysis, n: int, check_bounds: bool, eps_c: float, eps_l: float) -> None:
    """Every check on the selection, before any rewrite: n fits the kernel, and Eq. 12."""
    check_tap_counts(analysis, n)
    if not check_bounds:
        return
    failing = [
        s
        for s in analysis.selected
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


def _warn_zero_ring(analysis: Analysis, n: int) -> None:
    """With ``init="embed"``, name the layers where all n taps of a draw can land on the zero ring."""
    degenerate = []
    for site in analysis.selected:
        k = analysis.kernel_sizes[site.name]
        p = zero_ring_draw_probability(site.kernel_size, k, n)
        if p > 0:
            kh, kw = site.kernel_size
            degenerate.append(f"{site.name} ({kh}x{kw} in {k}x{k}: {100 * p:.3g}% of draws)")
    if degenerate:
        warnings.warn(
            f"dcspass.transform: init='embed' with n={n}: a draw can read only the zero ring around the "
            "embedded kernel, and the layer's output then does not depend on its input, in "
            f"{', '.join(degenerate)}. "
            "Use init='fresh' (the default) to train these layers; 'embed' suits n = k*k and fine-tuning.",
            stacklevel=3,
        )


def _warn_graph_result(model: nn.Module, result: nn.Module, calls: list[ConvSite]) -> None:
    """Say why the result of rewriting ``F.conv2d`` call sites is not ``type(model)``, and what it is."""
    cls = type(model).__name__
    if isinstance(result, ModeSwitchingGraphs):
        what = (
            f"a ModeSwitchingGraphs instead of {cls}: one torch.fx GraphModule per train/eval mode (its "
            "self.training branches make the traced graph depend on the mode), run as the mode selects"
        )
    else:
        what = f"a torch.fx GraphModule instead of {cls}"
    frozen = result.meta.get(FROZEN_MODE) if isinstance(result, fx.GraphModule) else None
    branches = (
        f" It calls a selected weight a different number of times in train and in eval mode, so the result "
        f"is its {frozen}-mode trace alone and keeps that mode's self.training branches."
        if frozen
        else ""
    )
    hooked = _unhooked_modules(model, result)
    hooks = (
        f" The hooks on {', '.join(hooked)} will not run: the graph inlines the forward of the model and "
        "its containers, and calls only its leaf modules."
        if hooked
        else ""
    )
    warnings.warn(
        f"dcspass.transform: the selected F.conv2d call site(s) {_call_sites(calls)} have no module to swap, "
        f"so the result is {what}; it has only forward.{branches}{hooks} To keep the class, make the call "
        "an nn.Conv2d module or leave it out of the policy.",
        stacklevel=3,
    )


def _unhooked_modules(model: nn.Module, result: nn.Module) -> list[str]:
    """The modules of ``model`` with hooks that ``result``'s graphs never call (the root, containers)."""
    graphs = result.graphs.values() if isinstance(result, ModeSwitchingGraphs) else [result]
    called = {node.target for gm in graphs for node in gm.graph.nodes if node.op == "call_module"}
    kinds = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")
    return [
        name or "the model itself"
        for name, module in model.named_modules()
        if name not in called and any(getattr(module, kind) for kind in kinds)
    ]


def _call_sites(sites: list[ConvSite]) -> str:
    """``conv2d (F.conv2d on self.w)``, for messages."""
    described = []
    for site in sites:
        weight = conv_call_args(site.node)["weight"]
        described.append(f"{site.name} (F.conv2d on self.{weight.target})")
    return ", ".join(described)
