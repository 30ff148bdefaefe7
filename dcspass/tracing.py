"""Tracing a model with torch.fx, every convolution a leaf.

The pass reads the traced graph for execution order and functional ``F.conv2d`` call sites; ``plan``
reads it for the convs' dataflow; ``instrument`` and the evaluation engine rewrite or cut it. They all
trace with ``trace`` below, so a conv is one ``call_module`` node under its qualified name everywhere.

A traced graph freezes the ``self.training`` branches it met outside leaf modules (``F.dropout(x, p,
self.training)``, functional stochastic depth as in torchvision's EfficientNet, timm's ``DropPath``).
A rewrite that must hand back a graph traces the model in each mode (``trace_in_mode``) and, where the
two graphs differ, returns both behind ``ModeSwitchingGraphs``, which runs the one ``self.training``
selects, so ``.train()`` / ``.eval()`` act as they do on the model.
"""

from __future__ import annotations

from torch import fx, nn

from .layers import DCSConv2d

__all__ = ["ConvTracer", "ModeSwitchingGraphs", "adopt_members", "model_name", "trace", "trace_in_mode"]


class ConvTracer(fx.Tracer):
    """A torch.fx tracer that keeps every conv (``nn.Conv2d`` and subclasses, ``DCSConv2d``) a leaf.

    Convs stay one ``call_module`` node each, so they keep their qualified names; a conv subclass whose
    forward does not trace (timm's ``Conv2dSame``) does not stop the trace, and a DCS layer's tap draw
    is never inlined into the graph.
    """

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (nn.Conv2d, DCSConv2d)) or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.GraphModule:
    """``model`` as a ``GraphModule`` traced by ``ConvTracer``, sharing its submodules and parameters.

    The graph code freezes whatever ``model.training`` selected at trace time (dropout, stochastic
    depth branches); a ``ModeSwitchingGraphs`` is traced through the graph of its current mode. Raises
    whatever torch.fx raises for a model it cannot trace.
    """
    root = model.graphs[model.training] if isinstance(model, ModeSwitchingGraphs) else model
    tracer = ConvTracer()
    graph = tracer.trace(root)
    gm = fx.GraphModule(tracer.root, graph, type(root).__name__)
    # GraphModule rebuilds the module tree from plain nn.Modules holding only what the graph uses;
    # put the model's own back, so that ``gm.layer2[0]`` still works and the state_dict keys are
    # exactly the model's.
    adopt_members(gm, model)
    return gm


def adopt_members(target: nn.Module, model: nn.Module) -> None:
    """Give ``target`` the model's own children, parameters and buffers (the same objects, under the
    same names, buffers as persistent as they were) and its train/eval mode."""
    for name, child in model.named_children():
        setattr(target, name, child)
    for name, param in model.named_parameters(recurse=False):
        setattr(target, name, param)
    for name, buf in model.named_buffers(recurse=False):
        target.register_buffer(name, buf, persistent=name not in model._non_persistent_buffers_set)
    target.training = model.training


def trace_in_mode(model: nn.Module, training: bool) -> fx.GraphModule:
    """``trace(model)`` as ``model.train(training)`` would leave it (the graph keeps that mode), every
    module's mode restored after."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.train(training)
        gm = trace(model)
    finally:
        for module, mode in modes:
            module.training = mode
    return gm


class ModeSwitchingGraphs(nn.Module):
    """A model whose traced graph depends on its mode, as one graph per mode: each call runs the one
    ``self.training`` selects.

    Its children, parameters and buffers are ``model``'s own, under the same names (the graphs, which
    share them, are held outside the module tree), so ``state_dict``, ``dcs_layers`` and the tap
    contexts see what they see on ``model``, and ``.train()`` / ``.eval()`` reach every leaf module
    both graphs call.
    """

    def __init__(self, model: nn.Module, graphs: dict[bool, fx.GraphModule]) -> None:
        super().__init__()
        adopt_members(self, model)
        # A plain dict, not submodules: no second name for each layer, no duplicate state_dict keys.
        self.graphs = dict(graphs)

    def forward(self, *args, **kwargs):
        return self.graphs[self.training](*args, **kwargs)

    def _apply(self, fn, recurse=True):
        # .to() / .cuda() / .half() may put new tensors in this module's own parameter and buffer
        # slots (buffers always); the graphs read them from their own roots, so hand them the new ones.
        # Submodules are shared objects, converted once through this module.
        super()._apply(fn, recurse)
        for gm in self.graphs.values():
            for slots, own in ((gm._parameters, self._parameters), (gm._buffers, self._buffers)):
                slots.update({name: tensor for name, tensor in own.items() if name in slots})
        return self


def model_name(model: nn.Module) -> str:
    """The class name a user knows ``model`` by, for messages and reports: a ``ModeSwitchingGraphs``
    goes by the model its graphs were traced from (their GraphModule class carries its name)."""
    if isinstance(model, ModeSwitchingGraphs):
        return f"{type(model.graphs[model.training]).__name__} (a graph per train/eval mode)"
    return type(model).__name__
