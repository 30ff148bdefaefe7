"""Writing files so that a run killed mid-write never leaves a truncated one.

Every file a run produces (checkpoints, reports, results) is written to a temporary file in the same
folder, flushed to disk, then moved over its name with ``os.replace``, which is atomic on POSIX and
Windows: a reader sees the old file or the new one, never half of one. The temporary file a kill
leaves behind (``.NAME.<random>.tmp``) is removed by the next write of the same name.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["remove_stale_temporaries", "stale_temporaries", "write_atomic", "write_text_atomic"]


def stale_temporaries(path: str | Path) -> list[Path]:
    """Temporary files a killed ``write_atomic`` of ``path`` left beside it (``.NAME.*.tmp``)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete what ``stale_temporaries`` finds; returns the removed paths."""
    removed = stale_temporaries(path)
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    return removed


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, then move it onto ``path``.

    The folder is created if needed. If ``write`` raises (or the process is interrupted), ``path``
    keeps its previous content and the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``Path(path).write_text(text)`` (UTF-8), atomically (see ``write_atomic``)."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))
