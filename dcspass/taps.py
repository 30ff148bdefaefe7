"""Taps: positions in the k x k window, numbered ``0 .. k*k-1`` row-major.

A DCS layer draws n distinct taps uniformly at every forward (``sample_taps``); taps given by a user
are checked by ``validate_taps``. Draws use torch's RNG only, so ``torch.manual_seed`` makes runs
reproducible and ``torch.compile`` keeps them random on every call: ``torch.rand`` followed by
``topk`` is an ordinary graph op, never a baked constant.
"""

from __future__ import annotations

import torch

from .errors import TapError

__all__ = ["sample_taps", "validate_taps"]


def sample_taps(
    num_positions: int,
    n: int,
    excluded: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw ``n`` distinct taps uniformly from ``range(num_positions)``, minus ``excluded``.

    Args:
        num_positions: k*k.
        n: taps to draw.
        excluded: optional bool mask ``[num_positions]``; True marks a tap that may not be drawn.
        device: where the draw happens (the layer's weight device).

    Returns:
        LongTensor ``[n]``, sorted ascending (sorted taps read the input in memory order).
    """
    scores = torch.rand(num_positions, device=device)
    if excluded is not None:
        # Uniform over the complement: excluded taps get a score no kept tap can lose to.
        scores = scores.masked_fill(excluded, -1.0)
    return scores.topk(n).indices.sort().values


def validate_taps(taps: torch.Tensor, num_positions: int, n: int | None = None, where: str = "taps") -> None:
    """Raise ``TapError`` unless ``taps`` is a 1-D integer tensor of distinct positions in range."""
    if not isinstance(taps, torch.Tensor):
        raise TapError(f"{where}: expected a LongTensor of tap positions, got {type(taps).__name__}")
    if taps.dtype not in (torch.int64, torch.int32):
        raise TapError(f"{where}: taps must be an integer tensor (torch.long), got dtype {taps.dtype}")
    if taps.dim() != 1 or taps.numel() == 0:
        raise TapError(f"{where}: taps must be a non-empty 1-D tensor, got shape {tuple(taps.shape)}")
    if n is not None and taps.numel() != n:
        raise TapError(f"{where}: expected {n} taps, got {taps.numel()}")
    if taps.device.type == "meta":
        return
    lo, hi = int(taps.min()), int(taps.max())
    if lo < 0 or hi >= num_positions:
        raise TapError(
            f"{where}: tap positions must lie in 0..{num_positions - 1} (row-major in the k x k window), "
            f"got values in {lo}..{hi}"
        )
    if torch.unique(taps).numel() != taps.numel():
        raise TapError(f"{where}: taps must be distinct, got {taps.tolist()}")
