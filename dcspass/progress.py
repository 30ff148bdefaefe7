"""Progress for long runs: tqdm bars with ETA on a terminal, one line per stage otherwise.

- ``bar(iterable, desc)``: a tqdm bar (ETA, rate) when stderr is an interactive terminal, else the
  bare iterable: a run piped to a file is not flooded with carriage returns.
- ``stage(message)``: one line on stderr when a stage starts (a training run, an evaluation protocol),
  whether or not stderr is a terminal, so a log file still shows where a long run is.
- ``log(message, **fields)``: the one-line-per-epoch result line on stdout.
- ``quiet()``: a context in which none of them prints (``--quiet`` on the command lines).

Only rank 0 of a distributed run prints; callers pass ``enabled=ctx.is_main``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm

__all__ = ["bar", "is_quiet", "log", "quiet", "stage"]

_quiet = False


@contextlib.contextmanager
def quiet(on: bool = True) -> Iterator[None]:
    """Silence bars, stage lines and log lines inside the context (when ``on``)."""
    global _quiet
    saved, _quiet = _quiet, _quiet or on
    try:
        yield
    finally:
        _quiet = saved


def is_quiet() -> bool:
    return _quiet


def bar(iterable: Iterable, desc: str, enabled: bool = True, total: int | None = None) -> Iterable:
    """Wrap ``iterable`` in a tqdm bar with ETA when ``enabled``, not quiet, and stderr is a terminal."""
    show = enabled and not _quiet and sys.stderr.isatty()
    return tqdm(
        iterable, desc=desc, total=total, disable=not show, leave=False, dynamic_ncols=True, file=sys.stderr
    )


def stage(message: str, enabled: bool = True) -> None:
    """Print ``message`` as one line on stderr (flushed) unless quiet: a long stage has started."""
    if enabled and not _quiet:
        print(message, file=sys.stderr, flush=True)


def log(message: str, enabled: bool = True, /, note: str = "", **fields: Any) -> None:
    """Print one line on stdout: ``message key=value ... note`` (floats to 4 significant digits), flushed."""
    if not enabled or _quiet:
        return
    parts = [message] + [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()]
    print(" ".join(parts + ([note] if note else [])), flush=True)
