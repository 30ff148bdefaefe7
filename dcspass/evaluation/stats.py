"""Intervals for accuracies and paired differences, over the evaluated images.

Every accuracy in a report is a mean over images of a per-image value: 0/1 for a deterministic
verdict, the exact probability over all tap sets, or an estimate from independent draws. Its 95 %
interval treats the images as the sample:

- 0/1 values: Wilson's score interval (sensible at 0 % and 100 %, where a t interval collapses);
- otherwise a Student-t interval on the per-image values, clipped to [0, 1]. When the per-image
  values are estimates from draws that are independent between images, their spread already holds
  the draw noise (variance between images plus the sampling variance of each estimate), so the
  interval covers both.

A paired difference (two models or attacks on the same images) is a t interval on the per-image
differences, with its two-sided p-value. Pure Python (``math``, ``statistics``): no SciPy at run time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

__all__ = [
    "CONFIDENCE",
    "Difference",
    "accuracy_interval",
    "paired_difference",
    "t_cdf",
    "t_interval",
    "t_quantile",
    "wilson_interval",
]

CONFIDENCE = 0.95


def t_cdf(t: float, df: int) -> float:
    """CDF of Student's t with ``df`` degrees of freedom (Simpson's rule on the density; error < 1e-9)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if t < 0:
        return 1.0 - t_cdf(-t, df)
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(u: float) -> float:
        return math.exp(log_norm - (df + 1) / 2 * math.log1p(u * u / df))

    # Integrate in the substitution u = tan(theta) so heavy tails (df = 1) stay well resolved.
    top = math.atan(t)
    steps = 2000
    h = top / steps
    total = 0.0
    for i in range(steps + 1):
        theta = i * h
        value = density(math.tan(theta)) / math.cos(theta) ** 2
        total += value * (1 if i in (0, steps) else 4 if i % 2 else 2)
    return 0.5 + total * h / 3


@lru_cache(maxsize=256)  # a report asks for the same few (q, df) many times
def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (bisection on ``t_cdf``)."""
    if not 0 < q < 1:
        raise ValueError(f"q must lie in (0, 1), got {q}")
    if q < 0.5:
        return -t_quantile(1 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < q else (lo, mid)
    return (lo + hi) / 2


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, sd


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student-t interval for the mean of ``values`` (one value: the whole real line)."""
    if not values:
        raise ValueError("t_interval needs at least one value")
    n = len(values)
    mean, sd = _mean_sd(values)
    if n == 1:
        return -math.inf, math.inf
    half = t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson's score interval for a proportion ``successes / n``."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes}/{n}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_interval(per_example: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """95 % interval of a mean accuracy from its per-image values in [0, 1] (see the module doc)."""
    values = [float(v) for v in per_example]
    if not values:
        raise ValueError("accuracy_interval needs at least one image")
    if all(v in (0.0, 1.0) for v in values):
        return wilson_interval(int(sum(values)), len(values), confidence)
    lo, hi = t_interval(values, confidence)
    return max(0.0, lo), min(1.0, hi)


@dataclass(frozen=True)
class Difference:
    """Mean of ``a - b`` over paired images, its interval, two-sided p-value and verdict."""

    mean: float
    low: float
    high: float
    p_value: float
    examples: int
    confidence: float = CONFIDENCE

    @property
    def significant(self) -> bool:
        """True when the interval excludes 0 (p below 1 - confidence)."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
            "low": self.low,
            "high": self.high,
            "p_value": self.p_value,
            "examples": self.examples,
            "confidence": self.confidence,
            "significant": self.significant,
        }


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Difference:
    """``a - b`` over the same images (per-image values, same order): t interval and p-value."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired values need the same, non-zero length, got {len(a)} and {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    mean, sd = _mean_sd(diffs)
    if n == 1 or sd == 0:
        p = 1.0 if mean == 0 else 0.0 if n > 1 else 1.0
        lo, hi = (mean, mean) if n > 1 else (-math.inf, math.inf)
        return Difference(mean, lo, hi, p, n, confidence)
    lo, hi = t_interval(diffs, confidence)
    t = mean / (sd / math.sqrt(n))
    p = 2 * (1 - t_cdf(abs(t), n - 1))
    return Difference(mean, lo, hi, min(1.0, max(0.0, p)), n, confidence)
