"""Checks a command line runs before any work: the device, and the paths it will write.

Each check raises one of our errors (``ConfigError``) with a message naming the flag, the value and
the fix, so a command can answer bad input with one line and exit code 2 before it trains or
evaluates anything. Nothing here writes a lasting file.
"""

from __future__ import annotations

import errno
import tempfile
from pathlib import Path

import torch

from .errors import ConfigError

__all__ = ["output_dir", "output_file", "resolve_device"]


def resolve_device(name: str | torch.device | None, flag: str = "--device") -> torch.device:
    """The device ``name`` means (None: CUDA when available, else the CPU), checked to exist here.

    Raises:
        ConfigError: a name torch does not parse, or a CUDA / MPS device this machine does not have.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"{flag} {name!r} is not a device torch knows; use cpu, cuda or cuda:1") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{flag} {name}: torch sees no CUDA device on this machine; use {flag} cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"{flag} {name}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{flag} {name}: MPS is not available on this machine; use {flag} cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{flag} {name}: dcspass runs on cpu or cuda, not {device.type}")
    return device


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()


def _probe_writable(folder: Path, flag: str, target: Path) -> None:
    """Create and remove a temporary file in ``folder``: the one test that also holds for root and /proc.

    ``target`` is ``folder`` itself, or a path under it whose missing folders a run would create there.
    """
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        why = {
            errno.ENOENT: f"{folder} accepts no new entries",  # it exists: a virtual file system (/proc)
            errno.EACCES: f"no permission to write in {folder}",
            errno.EPERM: f"no permission to write in {folder}",
            errno.EROFS: f"{folder} is on a read-only file system",
        }.get(exc.errno, exc.strerror or str(exc))
        what = f"cannot write in {folder}" if folder == target else "the folder cannot be created"
        raise ConfigError(f"{flag} {target}: {what} ({why}); choose a writable path") from exc


def output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Check that ``path`` is, or can be created as, a writable folder; returns it. Creates nothing.

    Raises:
        ConfigError: ``path`` (or a parent) is an existing file, or the place it would go is not writable.
    """
    path = Path(path).expanduser()
    existing = _nearest_existing(path)
    if not existing.is_dir():
        what = "is an existing file" if existing == path else f"lies under {existing}, which is a file"
        raise ConfigError(f"{flag} {path} {what}; {flag} names a folder: choose another path")
    _probe_writable(existing, flag, path)
    return path


def output_file(path: str | Path, flag: str) -> Path:
    """Check that a file can be written at ``path`` (its folder exists or can be created); returns it.

    Raises:
        ConfigError: ``path`` is a folder, lies under a file, or its folder is not writable.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file name such as {path / 'out.png'}")
    output_dir(path.parent, flag)
    return path
