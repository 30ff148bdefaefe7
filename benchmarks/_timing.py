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
    """One row per candidate; ``median_s`` is printed in milliseconds as ``median_ms``."""
    keys = list(next(iter(result.values())))
    headers = ["median_ms" if k == "median_s" else k for k in keys]
    widths = [max(len(h), 10) + 2 for h in headers]
    name_width = max(len(name) for name in result) + 2
    print(f"\n{title}")
    print(" " * name_width + "".join(f"{h:>{w}s}" for h, w in zip(headers, widths, strict=True)))
    for name, row in result.items():
        cells = [row[k] * (1e3 if k == "median_s" else 1) for k in keys]
        print(f"{name:<{name_width}s}" + "".join(f"{c:>{w}.2f}" for c, w in zip(cells, widths, strict=True)))
