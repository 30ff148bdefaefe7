"""Tracing a model with torch.fx, every convolution a leaf.

The pass reads the traced graph for execution order and functional ``F.conv2d`` call sites; ``plan``
reads it for the convs' dataflow; ``instrument`` and the evaluation engine rewrite or cut it. They all
trace with ``trace`` below, so a conv is one ``call_module`` node under its qualified name everywhere.
"""

from __future__ import annotations

from torch import fx, nn

from .layers import DCSConv2d

__all__ = ["ConvTracer", "adopt_members", "trace"]


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
    depth branches). Raises whatever torch.fx raises for a model it cannot trace.
    """
    tracer = ConvTracer()
    graph = tracer.trace(model)
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
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
