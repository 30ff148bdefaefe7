"""Evaluation engine: the paper's protocol and an adaptive protocol, side by side.

Layers, bottom up:
    draws (batched tap draws sharing the prefix) -> attacks (torchattacks on EOT / exact-expectation
    wrappers) -> scoring (per image, exact over every tap set or sampled per image) and stats (95 %
    intervals, paired differences) -> protocols (paper, adaptive) -> sanity checks, analyses
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
