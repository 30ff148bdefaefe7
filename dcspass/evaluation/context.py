"""What every protocol and analysis shares: the model, its draw runner, the threat model and budget.

Below ``protocols`` and ``reference`` (both take an ``EvalContext``), so neither imports the other's
module for it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from torch import nn

from ..sampling import dcs_layers, frozen_taps
from .budget import Budget
from .draws import DrawRunner
from .scoring import Scorer

__all__ = ["EvalContext", "frozen_if_random"]


@dataclass
class EvalContext:
    """What every protocol and analysis needs: the model, its draw runner, the threat model and budget."""

    model: nn.Module
    runner: DrawRunner
    eps: float
    budget: Budget
    n_classes: int
    seed: int
    transfer_source: nn.Module | None = None
    nonfinite: int = 0
    scorer: Scorer = field(init=False)

    def __post_init__(self) -> None:
        b = self.budget
        limit = b.exact_max_sets if b.score_max_sets is None else b.score_max_sets
        self.scorer = Scorer(self.runner, limit, b.sample_draws, self.seed)

    @property
    def randomized(self) -> bool:
        return not self.runner.deterministic

    def frozen(self) -> contextlib.AbstractContextManager:
        return frozen_if_random(self.model)


def frozen_if_random(model: nn.Module) -> contextlib.AbstractContextManager:
    """``frozen_taps(model)``, or a no-op for a model without DCS layers."""
    return frozen_taps(model) if any(True for _ in dcs_layers(model)) else contextlib.nullcontext()
