"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

Format (docs/architecture.md): ``{"format": "dcspass-checkpoint-v1", "config": TrainConfig.to_dict(),
"model": state_dict, "optimizer": ..., "scheduler": ..., "epoch": epochs completed, "rng": {...},
"history": [per-epoch dicts]}``. ``load_model`` rebuilds the network (architecture and DCS pass) from
``config`` and loads the weights: the one way evaluation gets a trained model.
"""

from __future__ import annotations

import errno
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..files import write_atomic
from .config import TrainConfig, build_network

__all__ = [
    "FORMAT",
    "capture_rng",
    "load_checkpoint",
    "load_model",
    "restore_rng",
    "save_checkpoint",
]

FORMAT = "dcspass-checkpoint-v1"


def capture_rng() -> dict[str, Any]:
    """The state of every RNG a run draws from: torch (CPU and CUDA), numpy, Python's ``random``.

    Stored with plain types and tensors only, so ``weights_only=True`` can read it back.
    """
    _kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng``."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["gauss"],
        )
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus the format tag) to ``path`` atomically: temp file, fsync, ``os.replace``.

    A run killed mid-write leaves the previous checkpoint intact, never a truncated one; the temporary
    file such a kill leaves is removed by the next save (or resume) of the same path.
    """
    write_atomic(path, lambda f: torch.save({"format": FORMAT, **payload}, f))


def load_checkpoint(path: str | Path, flag: str | None = None) -> dict[str, Any]:
    """Read a checkpoint dict on the CPU (``weights_only=True``).

    Tensors stay on the CPU: ``load_state_dict`` copies them to wherever the model lives, and the RNG
    states must be CPU tensors anyway. So a device problem can never surface here as a bad file.
    ``flag`` names the command-line option that gave ``path`` (``"--checkpoint"``), for messages.

    Raises:
        CheckpointError: the file is missing, does not parse (corrupt, truncated, not a torch file),
            or parses but is not a dcspass checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise CheckpointError(f"checkpoint {path} {what}; train first, or check {flag or 'the path'}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        # EINVAL: the zip reader seeked before the start of a truncated file; a bad file, not a bad disk.
        if exc.errno != errno.EINVAL:
            raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
        raise _unparsable(path, exc) from exc
    except Exception as exc:  # any parse failure: torch raises KeyError, EOFError, UnpicklingError, ...
        raise _unparsable(path, exc) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a dcspass checkpoint (format {found!r}, expected {FORMAT!r})")
    return state


def _unparsable(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} cannot be parsed: it is corrupt, truncated or not a torch file "
        f"({type(exc).__name__}: {str(exc)[:200]}); point to another file, or train again"
    )


# What makes two configs the same network; the DCS fields count only when there is a DCS pass.
_IDENTITY = ("arch", "num_classes", "in_channels", "width", "model_options", "policy")
_DCS_IDENTITY = ("n", "k")


def check_compatible(state: dict[str, Any], config: TrainConfig, path: str | Path) -> None:
    """``CheckpointError`` unless the checkpoint holds the same network as ``config`` would build."""
    saved = state["config"]
    expected = config.to_dict()
    keys = _IDENTITY + (_DCS_IDENTITY if expected["policy"] is not None else ())
    diff = {key: (saved.get(key), expected[key]) for key in keys if saved.get(key) != expected[key]}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs requested {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(
            f"checkpoint {path} belongs to another network ({detail}); use another --out or drop --resume"
        )


def load_model(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    expect: dict[str, Any] | None = None,
    flag: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained network of a checkpoint: ``(model, config)``, model in eval mode.

    Args:
        path: a checkpoint written by training.
        map_location: where the model goes (check it first with ``dcspass.preflight.resolve_device``;
            the file itself is always read on the CPU).
        expect: optional ``{field: value}`` the checkpoint's config must match (e.g.
            ``{"arch": "resnet18", "num_classes": 10}``); a mismatch is a ``CheckpointError``.
        flag: the command-line option that gave ``path``, named by the messages (``load_checkpoint``).
    """
    state = load_checkpoint(path, flag)
    config = state["config"]
    for key, value in (expect or {}).items():
        if config.get(key) != value:
            raise CheckpointError(
                f"checkpoint {path} has {key}={config.get(key)!r}, expected {value!r}: "
                "it belongs to another model"
            )
    try:
        model = build_network(config)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path} has a config this version cannot build: {exc}") from exc
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path}: weights do not fit {config['arch']} with {config['num_classes']} classes "
            f"({str(exc)[:300]})"
        ) from exc
    return model.to(map_location).eval(), config
