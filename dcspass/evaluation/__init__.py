"""Evaluation engine: the paper's protocol and an adaptive protocol, side by side (DESIGN.md §5).

Layers, bottom up:
    draws (batched tap draws sharing the prefix) -> attacks (torchattacks on EOT / exact-expectation
    wrappers) -> scoring (K fresh draws) -> protocols (paper, adaptive) -> sanity checks, analyses
    -> report (JSON, markdown, PNGs) -> ``evaluate`` (engine).
"""

from __future__ import annotations

from .budget import BUDGETS, Budget, get_budget
from .engine import evaluate
from .report import Report
from .sanity import SanityCheck
from .scoring import Accuracy

__all__ = ["BUDGETS", "Accuracy", "Budget", "Report", "SanityCheck", "evaluate", "get_budget"]
