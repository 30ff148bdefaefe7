"""The context managers that control each DCS layer's draw of taps, and ``dcs_layers``.

The draw itself (``sample_taps``) and the check of given taps (``validate_taps``) live in
``dcspass.taps``, below the layer; this module sits above it (it finds ``DCSConv2d`` layers).

Control lives on the layer itself (plain attributes, so compiled graphs guard on them):

- ``frozen_taps(model)``: one tap set per layer for the whole context, drawn at entry.
- ``excluding_taps(model, taps)``: draw from the complement of the given taps (GSAT).
- ``using_taps(model, taps)``: use exactly the given taps (exact-expectation attacks, analyses).

A ``torch.export`` program of a DCS model draws its taps inside its graph, so it resamples at every
call but cannot be frozen from outside: these contexts refuse it with a ``TapError`` that says so,
and exporting inside them warns that the program bakes that one draw.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from .errors import TapError
from .layers import DCSConv2d
from .taps import validate_taps

__all__ = ["dcs_layers", "excluding_taps", "frozen_taps", "using_taps"]


def dcs_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(qualified_name, layer)`` for every DCS layer in ``model`` (``""`` for the model itself)."""
    for name, module in model.named_modules():
        if isinstance(module, DCSConv2d):
            yield name, module


def _exported_dcs_calls(model: object) -> int:
    """How many DCS op calls a ``torch.export`` program (or its ``.module()``) holds in its graph."""
    if isinstance(model, (torch.export.ExportedProgram, torch.fx.GraphModule)):
        graph = model.graph
    else:
        return 0
    return sum(1 for node in graph.nodes if node.op == "call_function" and "dcs_conv2d" in str(node.target))


def _layers_or_raise(model: nn.Module, what: str) -> list[tuple[str, nn.Module]]:
    if isinstance(model, torch.export.ExportedProgram) or (
        not any(True for _ in dcs_layers(model)) and _exported_dcs_calls(model)
    ):
        raise TapError(
            f"{what}: got a torch.export program; its {_exported_dcs_calls(model)} DCS layer(s) draw their "
            "taps inside the exported graph, where they cannot be frozen or set from outside. Control the "
            f"taps on the eager model ({what}(model, ...)); to deploy one fixed draw, run torch.export "
            "inside using_taps(model, taps), which bakes those taps into the program"
        )
    layers = list(dcs_layers(model))
    if not layers:
        raise TapError(
            f"{what}: {type(model).__name__} has no DCSConv2d layer; transform it first "
            "(dcspass.transform(model, policy=...))"
        )
    return layers


def _per_layer(
    model: nn.Module, taps: torch.Tensor | Mapping[str, torch.Tensor], what: str
) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """Match a tensor (for a single layer) or a ``{qualified_name: taps}`` mapping to layers."""
    layers = _layers_or_raise(model, what)
    if isinstance(taps, torch.Tensor):
        if len(layers) != 1:
            names = ", ".join(n or "<root>" for n, _ in layers)
            raise TapError(
                f"{what}: the model has {len(layers)} DCS layers ({names}); pass a dict "
                "{qualified_name: taps} instead of one tensor"
            )
        return [(layers[0][0], layers[0][1], taps)]
    by_name = dict(layers)
    unknown = sorted(set(taps) - set(by_name))
    if unknown:
        raise TapError(
            f"{what}: no DCS layer named {unknown}; DCS layers are {sorted(by_name) or ['<root>']}"
        )
    return [(name, by_name[name], t) for name, t in taps.items()]


@contextlib.contextmanager
def frozen_taps(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Freeze one draw of taps per DCS layer for the whole context.

    The draw happens at entry and honours any active ``excluding_taps``. Yields the frozen taps
    ``{qualified_name: LongTensor[n]}``. Nested contexts restore the outer state on exit.
    """
    layers = _layers_or_raise(model, "frozen_taps")
    saved = [(layer, layer.fixed_taps) for _, layer in layers]
    drawn = {}
    try:
        for name, layer in layers:
            if layer.fixed_taps is None:
                layer.fixed_taps = layer.draw_taps()
            drawn[name] = layer.fixed_taps
        yield drawn
    finally:
        for layer, old in saved:
            layer.fixed_taps = old


@contextlib.contextmanager
def using_taps(model: nn.Module, taps: torch.Tensor | Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Use exactly the given taps (per qualified layer name) for every forward in the context."""
    matched = _per_layer(model, taps, "using_taps")
    saved = [(layer, layer.fixed_taps) for _, layer, _ in matched]
    try:
        for name, layer, t in matched:
            validate_taps(t, layer.num_positions, layer.n, where=f"using_taps[{name or '<root>'}]")
            layer.fixed_taps = t.to(device=layer.weight.device, dtype=torch.long)
        yield
    finally:
        for layer, old in saved:
            layer.fixed_taps = old


@contextlib.contextmanager
def excluding_taps(model: nn.Module, taps: torch.Tensor | Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Draw taps from the complement of ``taps`` (per qualified layer name) inside the context.

    This is GSAT's training draw: taps the attack used (X^s) are excluded. Exclusions nest (the
    union applies). Excluding so many taps that fewer than n remain raises ``TapError``.
    """
    matched = _per_layer(model, taps, "excluding_taps")
    saved = [(layer, layer.excluded_mask) for _, layer, _ in matched]
    try:
        for name, layer, t in matched:
            where = f"excluding_taps[{name or '<root>'}]"
            validate_taps(t, layer.num_positions, None, where=where)
            mask = torch.zeros(layer.num_positions, dtype=torch.bool, device=layer.weight.device)
            mask[t.to(mask.device)] = True
            if layer.excluded_mask is not None:
                mask |= layer.excluded_mask
            remaining = layer.num_positions - int(mask.sum())
            if remaining < layer.n:
                raise TapError(
                    f"{where}: excluding {layer.num_positions - remaining} of {layer.num_positions} taps "
                    f"leaves {remaining}, fewer than n={layer.n}; exclude fewer taps or use a larger k"
                )
            layer.excluded_mask = mask
        yield
    finally:
        for layer, old in saved:
            layer.excluded_mask = old
