"""``instrument(model)``: the same model, recording the taps every DCS layer used (X^s of GSAT).

A graph rewrite, not a global: every call of a DCS layer, ``y = self.layer(x)``, becomes

    y, taps = self.layer.forward_with_taps(x)
    self.captured_taps["layer"] = taps

and the graph starts by clearing ``captured_taps``. The instrumented model shares its DCS layers (and
every other module and parameter) with ``model``, under the same qualified names, so
``frozen_taps`` / ``excluding_taps`` / ``using_taps`` work on either, and training one trains both.
"""

from __future__ import annotations

import operator
import warnings

from torch import fx, nn

from .errors import ConfigError
from .layers import DCSConv2d
from .sampling import dcs_layers
from .transform import trace

__all__ = ["instrument"]


def instrument(model: nn.Module) -> fx.GraphModule:
    """A ``GraphModule`` computing what ``model`` computes, with ``.captured_taps`` after each forward.

    ``captured_taps`` is ``{qualified_name: LongTensor[n]}``, the taps each DCS layer used in the last
    forward (for a layer called several times, its last call). The model must be traceable by
    torch.fx with convs as leaves (any model ``dcspass.transform`` returned a ``GraphModule`` for is).

    Raises:
        ConfigError: the model has no DCS layer, or torch.fx cannot trace it.
    """
    if not list(dcs_layers(model)):
        raise ConfigError(
            f"instrument: {type(model).__name__} has no DCSConv2d layer; transform it first "
            "(dcspass.transform(model, policy=...))"
        )
    try:
        gm = trace(model)
    except Exception as exc:
        raise ConfigError(
            f"instrument: torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: {exc}); "
            "instrument needs a traceable model (transform falls back to module swapping for such "
            "models, but the tap capture is a graph rewrite)"
        ) from exc
    graph = gm.graph
    gm.captured_taps = {}
    calls = [
        node for node in graph.nodes
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
