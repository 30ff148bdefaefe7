"""Evaluation engine: the paper's protocol and an adaptive protocol, side by side (DESIGN.md §5).

Layers, bottom up:
    draws (batched tap draws sharing the prefix) -> attacks (torchattacks on EOT / exact-expectation
    wrappers) -> scoring (K fresh draws) -> protocols (paper, adaptive) -> sanity checks, analyses
    -> report (JSON, markdown, PNGs) -> ``evaluate`` (engine); ``comparison`` sets several trained
    models side by side (Fig. 4a).
"""

from __future__ import annotations

from .budget import BUDGETS, Budget, get_budget
from .comparison import compare_gradient_cosine, plot_cosine_comparison
from .engine import evaluate
from .report import Report
from .sanity import SanityCheck
from .scoring import Accuracy

__all__ = [
    "BUDGETS",
    "Accuracy",
    "Budget",
    "Report",
    "SanityCheck",
    "compare_gradient_cosine",
    "evaluate",
    "get_budget",
    "plot_cosine_comparison",
]
