"""Side-by-side timing: interleaved rounds in one process, median of per-round ratios."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_once(fn: Callable[[], object], reps: int) -> float:
    """Seconds per call of ``fn`` averaged over ``reps`` calls."""
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def compare(
    candidates: dict[str, Callable[[], object]],
    baseline: str,
    rounds: int = 7,
    reps: int = 3,
    warmup: int = 2,
) -> dict[str, dict[str, float]]:
    """Time every candidate once per round, in rotating order, and report medians.

    Returns ``{name: {"median_s": ..., "ratio_vs_<baseline>": median over rounds of baseline/name}}``;
    a ratio above 1 means ``name`` is that many times faster than the baseline.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    names = list(candidates)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            times[name].append(time_once(candidates[name], reps))
    result = {}
    for name in names:
        ratios = [b / t for b, t in zip(times[baseline], times[name], strict=True)]
        result[name] = {
            "median_s": statistics.median(times[name]),
            f"speedup_vs_{baseline}": statistics.median(ratios),
        }
    return result


def print_table(title: str, result: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    keys = list(next(iter(result.values())))
    print(f"{'':32s}" + "".join(f"{k:>26s}" for k in keys))
    for name, row in result.items():
        print(f"{name:32s}" + "".join(f"{row[k] * (1e3 if k == 'median_s' else 1):>26.3f}" for k in keys))
    print("(median_s column in milliseconds)")
