"""Where a result came from: the record ``report.json`` and ``results.json`` carry.

A number without its checkpoint, data split, command and versions cannot be checked or reproduced;
``provenance`` gathers them in one JSON-able dict, the same for the evaluation CLI and the recipes.
"""

from __future__ import annotations

import hashlib
import platform
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

__all__ = ["distribution_version", "file_record", "file_sha256", "provenance"]


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: str | Path) -> dict[str, Any]:
    """``{path, bytes, sha256}`` of a file (resolved path; size and sha256 None where it does not exist)."""
    p = Path(path).resolve()
    exists = p.is_file()
    return {
        "path": str(p),
        "bytes": p.stat().st_size if exists else None,
        "sha256": file_sha256(p) if exists else None,
    }


def distribution_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (e.g. ``"torch"``), or None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def provenance(
    *,
    command: str,
    seed: int,
    device: str | torch.device,
    dataset: str,
    split: str,
    data_dir: str | Path | None = None,
    checkpoints: Mapping[str, str | Path] | None = None,
) -> dict[str, Any]:
    """The record of one run.

    Args:
        command: the command line as the user typed it (``shlex.join`` of the program and its arguments).
        seed: the base seed.
        device: where it ran.
        dataset, split: the dataset name and the split the numbers come from (``"test"``,
            ``"train (training) / test (evaluation)"``...).
        data_dir: the data folder (None: the embedded default or the dataset's default folder).
        checkpoints: ``{role: path}`` of the checkpoints the result rests on; each is recorded with its
            resolved path, size and sha256 (None for a file that does not exist).

    Returns:
        ``{"command", "seed", "device", "dataset": {name, split, data_dir}, "checkpoints": {role:
        {path, bytes, sha256}}, "versions": {dcspass, torch, torchattacks, python}, "platform", "time"}``.
    """
    records = {role: file_record(path) for role, path in (checkpoints or {}).items()}
    return {
        "command": command,
        "seed": seed,
        "device": str(device),
        "dataset": {
            "name": dataset,
            "split": split,
            "data_dir": None if data_dir is None else str(Path(data_dir).resolve()),
        },
        "checkpoints": records,
        "versions": {
            "dcspass": distribution_version("dcspass"),
            "torch": torch.__version__,
            "torchattacks": distribution_version("torchattacks"),
            "python": sys.version.split()[0],
        },
        "platform": platform.platform(),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }
