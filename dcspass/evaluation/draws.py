"""Running a DCS model under many tap draws at once, sharing the work before the first DCS layer.

Every attack of the adaptive protocol and every score needs the model's output under M draws of
the taps (EOT samples, the C(k*k, n) tap sets of the exact-expectation attack, K scoring draws).
Running M full forwards repeats the deterministic prefix (everything that does not depend on a DCS
layer) M times. ``DrawRunner`` cuts the model at its DCS layers instead:

- it traces the model with torch.fx (DCS layers are leaves), runs the prefix once on ``[B, ...]``,
  and runs the rest once on ``[M*B, ...]`` with the prefix values it needs repeated M times;
- in that batched run every DCS layer applies tap set m to rows ``m*B .. (m+1)*B``: the first DCS
  layer uses the given tap sets (from per-tap partial outputs when M*n > k*k, since the output of a
  tap set is the sum of its taps' outputs), later DCS layers draw afresh per group, as M independent
  forwards would.

Models that do not trace, or whose split output does not match an ordinary forward (checked once),
fall back to M ordinary forwards under ``using_taps``, with a warning. The result is identical either
way; only the cost differs.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable

import torch
from torch import fx, nn
from torch.utils.checkpoint import checkpoint

from ..layers import DCSConv2d
from ..sampling import dcs_layers, using_taps
from ..tracing import trace

__all__ = ["DrawRunner", "TapSets", "all_tap_sets"]

# Rows (M*B) per chunk of the batched suffix; beyond one chunk, chunks are checkpointed so memory
# stays bounded however many tap sets are averaged.
DEFAULT_MAX_ROWS = 2048


def all_tap_sets(layer: DCSConv2d, device: torch.device | None = None) -> torch.Tensor:
    """Every tap set of ``layer``: LongTensor ``[C(k*k, n), n]``, rows sorted ascending."""
    combos = list(itertools.combinations(range(layer.num_positions), layer.n))
    return torch.tensor(combos, dtype=torch.long, device=device or layer.weight.device)


class TapSets:
    """Which taps the first DCS layer uses in each of the M groups of a batched run.

    ``TapSets.sample(m)``: m fresh draws (honouring any ``excluding_taps``); ``TapSets.given(t)``:
    exactly the rows of ``t [M, n]``. Later DCS layers always draw afresh per group.
    """

    def __init__(self, count: int, fixed: torch.Tensor | None) -> None:
        self.count = count
        self.fixed = fixed

    @classmethod
    def sample(cls, count: int) -> TapSets:
        return cls(count, None)

    @classmethod
    def given(cls, tap_sets: torch.Tensor) -> TapSets:
        return cls(int(tap_sets.shape[0]), tap_sets)

    def resolve(self, layer: DCSConv2d | None) -> torch.Tensor | None:
        """The concrete ``[M, n]`` tap sets for ``layer`` (None for a model without DCS layers)."""
        if layer is None:
            return None
        if self.fixed is not None:
            return self.fixed.to(layer.weight.device)
        if layer.fixed_taps is not None:  # inside frozen_taps / using_taps: every group uses them
            return layer.fixed_taps.expand(self.count, -1)
        return torch.stack([layer.draw_taps() for _ in range(self.count)])


class _Split:
    """The traced model's nodes, cut into the prefix (independent of DCS) and the suffix."""

    def __init__(self, model: nn.Module) -> None:
        if isinstance(model, fx.GraphModule):
            self.gm = model
        else:
            self.gm = trace(model)
        modules = dict(self.gm.named_modules())
        nodes = list(self.gm.graph.nodes)
        placeholders = [n for n in nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise TypeError(f"expected one input, the graph has {len(placeholders)}")
        self.dcs_nodes = [
            n for n in nodes if n.op == "call_module" and isinstance(modules.get(n.target), DCSConv2d)
        ]
        if not self.dcs_nodes:
            raise TypeError("no DCS layer in the graph")
        suffix: set[fx.Node] = set()
        for node in nodes:  # topological order: a node is in the suffix if a DCS node or an input of it is
            if node in self.dcs_nodes or any(a in suffix for a in node.all_input_nodes):
                suffix.add(node)
        self.suffix = suffix
        self.boundary = [n for n in nodes if n not in suffix and any(u in suffix for u in n.users)]
        batch_dependent: set[fx.Node] = set(placeholders)
        for node in nodes:
            if any(a in batch_dependent for a in node.all_input_nodes):
                batch_dependent.add(node)
        self.batch_dependent = batch_dependent
        self.first_dcs = self.dcs_nodes[0]
        self.first_layer: DCSConv2d = modules[self.first_dcs.target]  # type: ignore[assignment]


class _PrefixInterpreter(fx.Interpreter):
    def __init__(self, split: _Split) -> None:
        super().__init__(split.gm, garbage_collect_values=False)
        self.split = split

    def run_node(self, n: fx.Node):
        return None if n in self.split.suffix else super().run_node(n)


class _SuffixInterpreter(fx.Interpreter):
    """Runs the suffix on M groups of B rows; DCS calls apply one tap set per group."""

    def __init__(self, split: _Split, groups: int, first_out: torch.Tensor) -> None:
        super().__init__(split.gm, garbage_collect_values=True)
        self.split, self.groups = split, groups
        self.first_out = first_out  # the first DCS layer's output for all groups, precomputed

    def run_node(self, n: fx.Node):
        if n is self.split.first_dcs:
            return self.first_out
        if n not in self.split.suffix:
            return None  # prefix values the suffix needs are in the initial env already
        return super().run_node(n)

    def call_module(self, target, args, kwargs):
        module = self.fetch_attr(target)
        if not isinstance(module, DCSConv2d) or module.fixed_taps is not None:
            return super().call_module(target, args, kwargs)
        x = args[0]
        chunks = x.chunk(self.groups)
        return torch.cat([module.convolve(c, module.draw_taps()) for c in chunks])


class DrawRunner:
    """Evaluate ``model`` under M tap draws per input, sharing the prefix before the first DCS layer.

    ``runner(x, tap_sets) -> logits [M, B, classes]`` for ``x [B, ...]``. Gradients flow to ``x``.
    Without DCS layers the model is deterministic and is run once (the M outputs are that one, repeated).

    Args:
        model: the classifier (an ``nn.Module`` or a ``torch.fx.GraphModule``), in the mode it is to run.
        max_rows: rows (M*B) per chunk of the batched run; more rows are checkpointed chunk by chunk.
        split: False forces the fallback (M ordinary forwards), for comparison and tests.
    """

    def __init__(self, model: nn.Module, max_rows: int = DEFAULT_MAX_ROWS, split: bool = True) -> None:
        self.model = model
        self.max_rows = max_rows
        layers = list(dcs_layers(model))
        self.layer_count = len(layers)
        self.first_name, self.first_layer = layers[0] if layers else ("", None)
        self.deterministic = not layers
        self._split: _Split | None = None
        self._verified = False
        self.fallback_reason: str | None = None
        if self.deterministic or not split:
            self.fallback_reason = None if self.deterministic else "split disabled"
            return
        try:
            self._split = _Split(model)
            self.first_name = self._split.first_dcs.target  # type: ignore[assignment]
            self.first_layer = self._split.first_layer
        except Exception as err:
            self._fallback(f"the model does not trace with torch.fx ({type(err).__name__}: {err})")

    @property
    def split(self) -> bool:
        """True when the prefix is shared across draws (the fast path)."""
        return self._split is not None

    def _fallback(self, reason: str) -> None:
        self._split = None
        self.fallback_reason = reason
        warnings.warn(
            f"DrawRunner: {reason}; evaluating each tap draw with a full forward (same result, slower)",
            stacklevel=3,
        )

    def __call__(self, x: torch.Tensor, tap_sets: TapSets) -> torch.Tensor:
        if self.deterministic:
            y = self.model(x)
            return y.unsqueeze(0).expand(tap_sets.count, *y.shape)
        sets = tap_sets.resolve(self.first_layer)
        if self._split is not None and not self._verified:
            self._verify(x, sets)
        if self._split is None:
            return self._full_forwards(x, sets)
        return self._split_forward(x, sets)

    # -- paths -----------------------------------------------------------------------------------

    def _full_forwards(self, x: torch.Tensor, sets: torch.Tensor) -> torch.Tensor:
        outs = []
        for taps in sets:
            with using_taps(self.model, {self.first_name: taps}):
                outs.append(self.model(x))
        return torch.stack(outs)

    def _split_forward(self, x: torch.Tensor, sets: torch.Tensor) -> torch.Tensor:
        split = self._split
        assert split is not None
        prefix = _PrefixInterpreter(split)
        prefix.run(x)
        env = {n: prefix.env[n] for n in split.boundary}
        batch = x.shape[0]
        layer = split.first_layer
        first_input = env[split.first_dcs.args[0]]  # type: ignore[index]
        per_tap = None
        if sets.shape[0] * layer.n > layer.num_positions and layer.fixed_taps is None:
            # One partial output per tap position; a tap set's output is the sum of its taps' partials.
            positions = torch.arange(layer.num_positions, device=layer.weight.device)
            per_tap = torch.stack(
                [layer.convolve(first_input, positions[t : t + 1], with_bias=False) for t in positions]
            )
        per_chunk = max(1, self.max_rows // max(batch, 1))
        outs = []
        chunks = list(sets.split(per_chunk))
        for chunk in chunks:
            args = (first_input, per_tap, chunk, *env.values())
            if len(chunks) > 1 and torch.is_grad_enabled():
                out = checkpoint(self._run_chunk, *args, use_reentrant=False, preserve_rng_state=True)
            else:
                out = self._run_chunk(*args)
            outs.append(out.view(chunk.shape[0], batch, *out.shape[1:]))
        return torch.cat(outs)

    def _run_chunk(self, first_input, per_tap, chunk, *boundary_values):
        split = self._split
        assert split is not None
        layer = split.first_layer
        groups = chunk.shape[0]
        if per_tap is not None:
            first_out = per_tap[chunk].sum(1)  # [M, B, C, H, W]
            if layer.bias is not None:
                first_out = first_out + layer.bias.view(1, 1, -1, 1, 1)
            first_out = first_out.flatten(0, 1)
        else:
            first_out = torch.cat([layer.convolve(first_input, taps) for taps in chunk])
        env = {}
        for node, value in zip(split.boundary, boundary_values, strict=True):
            if node in split.batch_dependent and isinstance(value, torch.Tensor):
                value = value.unsqueeze(0).expand(groups, *value.shape).flatten(0, 1)
            env[node] = value
        suffix = _SuffixInterpreter(split, groups, first_out)
        return suffix.run(None, initial_env=env)

    def _verify(self, x: torch.Tensor, sets: torch.Tensor) -> None:
        """Check once that the split path equals ordinary forwards; fall back if it does not."""
        self._verified = True
        probe_sets = sets[:2]
        probe_x = x[:2].detach()
        try:
            with torch.no_grad():
                fast = self._split_forward(probe_x, probe_sets)
                slow = self._full_forwards(probe_x, probe_sets)
        except Exception as err:
            self._fallback(f"the split forward failed ({type(err).__name__}: {err})")
            return
        if fast.shape != slow.shape:
            self._fallback(f"the split forward returns shape {tuple(fast.shape)}, not {tuple(slow.shape)}")
            return
        if len(list(dcs_layers(self.model))) > 1:
            # Later layers draw at random in both paths: only shapes and finiteness can be compared.
            if not torch.isfinite(fast).all():
                self._fallback("the split forward gave non-finite outputs")
            return
        scale = slow.abs().max().clamp_min(1.0)
        if not torch.allclose(fast, slow, atol=1e-4 * float(scale), rtol=1e-4):
            diff = float((fast - slow).abs().max())
            self._fallback(f"the split forward differs from ordinary forwards by {diff:.2e}")


def expected_probs(runner: DrawRunner, x: torch.Tensor, tap_sets: TapSets) -> torch.Tensor:
    """Softmax averaged over the draws: ``[B, classes]``."""
    return runner(x, tap_sets).softmax(-1).mean(0)


def log_expected_probs(runner: DrawRunner, x: torch.Tensor, tap_sets: TapSets) -> torch.Tensor:
    """``log E[softmax]`` over the draws, ``[B, classes]``: logits of the expected classifier."""
    return expected_probs(runner, x, tap_sets).clamp_min(1e-12).log()


def n_tap_sets(layer: DCSConv2d) -> int:
    """C(k*k, n): the size of ``layer``'s tap space."""
    return math.comb(layer.num_positions, layer.n)


TapSetProvider = Callable[[], TapSets]
