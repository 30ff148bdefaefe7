"""Progress bars and the one-line-per-epoch log.

Bars (tqdm, with ETA) show only on an interactive terminal and only on rank 0; the epoch log line
always prints (rank 0), so a run piped to a file reads as one line per epoch.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

__all__ = ["bar", "log"]


def bar(iterable: Iterable, desc: str, enabled: bool = True, total: int | None = None) -> Iterable:
    """Wrap ``iterable`` in a tqdm bar when ``enabled`` and stderr is a terminal."""
    show = enabled and sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, disable=not show, leave=False, dynamic_ncols=True)


def log(message: str, enabled: bool = True, **fields: Any) -> None:
    """Print one line: ``message key=value ...`` (floats to 4 significant digits), flushed."""
    if not enabled:
        return
    parts = [message] + [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()]
    print(" ".join(parts), flush=True)
