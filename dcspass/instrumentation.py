"""``instrument(model)``: the same model, recording the taps every DCS layer used (X^s of GSAT).

A graph rewrite, not a global: every call of a DCS layer, ``y = self.layer(x)``, becomes

    y, taps = self.layer.forward_with_taps(x)
    self.captured_taps["layer"] = taps

and the graph starts by clearing ``captured_taps``. The instrumented model shares its DCS layers (and
every other module and parameter) with ``model``, under the same qualified names, so
``frozen_taps`` / ``excluding_taps`` / ``using_taps`` work on either, and training one trains both.

A traced graph freezes the ``self.training`` branches it met (functional stochastic depth, as in
torchvision's EfficientNet, or timm's ``DropPath``). So the model is traced in both modes; where the
two graphs differ, the result holds one per mode and runs the one ``self.training`` selects at each
call (``dcspass.tracing.ModeSwitchingGraphs``), so ``.train()`` / ``.eval()`` act as on the model
itself.

A model torch.fx cannot trace (one ``transform`` warned about) is instrumented with hooks
instead, with a warning: a copy of its module tree that shares every leaf module and parameter, whose
forward freezes each DCS layer's draw for the duration of the layer's call and records it.
"""

from __future__ import annotations

import copy
import operator
import warnings

import torch
from torch import fx, nn

from .errors import ConfigError
from .layers import DCSConv2d
from .sampling import dcs_layers
from .tracing import ModeSwitchingGraphs, trace, trace_in_mode
from .validation import check_model

__all__ = ["ModeSwitchingGraphs", "instrument"]


def instrument(model: nn.Module) -> nn.Module:
    """A model computing what ``model`` computes, with ``.captured_taps`` after each forward.

    ``captured_taps`` is ``{qualified_name: LongTensor[n]}``, the taps each DCS layer used in the last
    forward (for a layer called several times, its last call). The result is a ``GraphModule`` when
    torch.fx can trace ``model`` with convs as leaves and the traces in train and in eval mode are the
    same graph; a ``ModeSwitchingGraphs`` holding both when they differ; else a hook-instrumented copy
    of the module tree (with a warning). Each shares every module and parameter with ``model``.

    Raises:
        ModelError: ``model`` is not an ``nn.Module``.
        ConfigError: the model has no DCS layer.
    """
    check_model(model, "dcspass.instrument")
    if not list(dcs_layers(model)):
        raise ConfigError(
            f"instrument: {type(model).__name__} has no DCSConv2d layer; transform it first "
            "(dcspass.transform(model, policy=...))"
        )
    try:
        current = trace(model)
        other = trace_in_mode(model, not model.training)
    except Exception as exc:  # torch.fx raises many types; any of them means: no graph to rewrite
        first_line = (str(exc).strip().splitlines() or [""])[0]
        warnings.warn(
            f"dcspass.instrument: torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: "
            f"{first_line}); recording the taps with hooks on the DCS layers instead",
            stacklevel=2,
        )
        return _instrument_with_hooks(model)
    captured: dict[str, torch.Tensor] = {}
    if other.code == current.code:
        return _record_taps(current, captured)
    graphs = {model.training: current, not model.training: other}
    result = ModeSwitchingGraphs(model, {mode: _record_taps(gm, captured) for mode, gm in graphs.items()})
    result.captured_taps = captured  # the one dict both graphs fill
    return result


def _record_taps(gm: fx.GraphModule, captured: dict[str, torch.Tensor]) -> fx.GraphModule:
    """Rewrite ``gm`` in place so that each forward fills ``captured`` (its ``captured_taps``)."""
    graph = gm.graph
    gm.captured_taps = captured
    calls = [
        node
        for node in graph.nodes
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), DCSConv2d)
    ]
    first = next(iter(graph.nodes))
    while first.op == "placeholder":
        first = first.next
    with graph.inserting_before(first), warnings.catch_warnings():
        # get_attr warns for attributes that are not modules, parameters or buffers; a dict is fine.
        warnings.simplefilter("ignore", UserWarning)
        store = graph.get_attr("captured_taps")
        graph.call_method("clear", (store,))
    for node in calls:
        with graph.inserting_before(node):
            layer = graph.get_attr(node.target)
            pair = graph.call_method("forward_with_taps", (layer, *node.args), dict(node.kwargs))
            output = graph.call_function(operator.getitem, (pair, 0))
            taps = graph.call_function(operator.getitem, (pair, 1))
            graph.call_function(operator.setitem, (store, node.target, taps))
        output.meta = dict(node.meta)
        node.replace_all_uses_with(output)
        graph.erase_node(node)
    graph.lint()
    gm.recompile()
    return gm


def _instrument_with_hooks(model: nn.Module) -> nn.Module:
    """The fallback: hooks on the (shared) DCS layers that act only while the copy's forward runs."""
    if isinstance(model, DCSConv2d):
        raise ConfigError("instrument: pass the model that contains the DCS layer, not the layer itself")
    inst = _tree_copy(model)
    captured: dict[str, torch.Tensor] = {}
    inst.captured_taps = captured
    running = [0]  # > 0 while inst's forward runs; the shared layers ignore calls from other models
    drew: set[int] = set()

    def enter(module, args) -> None:
        if running[0] == 0:
            captured.clear()
        running[0] += 1

    def leave(module, args, output) -> None:
        running[0] -= 1

    def freeze_draw(layer: DCSConv2d, args) -> None:
        if running[0] and layer.fixed_taps is None:
            layer.fixed_taps = layer.draw_taps()  # honours excluding_taps, as forward would
            drew.add(id(layer))

    def record(name: str):
        def hook(layer: DCSConv2d, args, output) -> None:
            if running[0]:
                captured[name] = layer.fixed_taps
                if id(layer) in drew:
                    drew.discard(id(layer))
                    layer.fixed_taps = None

        return hook

    inst.register_forward_pre_hook(enter)
    inst.register_forward_hook(leave, always_call=True)
    for name, layer in dcs_layers(inst):
        layer.register_forward_pre_hook(freeze_draw)
        layer.register_forward_hook(record(name), always_call=True)
    return inst


def _tree_copy(module: nn.Module) -> nn.Module:
    """A copy of the module tree: new container modules, the same leaf modules and parameters."""
    if isinstance(module, DCSConv2d) or not module._modules:
        return module
    new = copy.copy(module)
    for key, value in module.__dict__.items():
        if key.startswith("_") and isinstance(value, dict):  # parameters, buffers, hooks: own dicts
            new.__dict__[key] = type(value)(value)
    for key, child in module._modules.items():
        new._modules[key] = None if child is None else _tree_copy(child)
    return new
