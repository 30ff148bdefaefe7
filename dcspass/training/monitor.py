"""Per-epoch monitoring: clean and PGD accuracy on a held-out slice, under the paper's protocol.

Paper protocol (Algorithm 2): the attack runs with one draw of taps frozen for all its iterations,
and the prediction uses a fresh draw. This is the quick number the training log prints; the full
evaluation (both protocols, adaptive attacks) is ``dcspass.evaluate``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import nn

from ..attacks import make_pgd
from ..sampling import dcs_layers, frozen_taps

__all__ = ["paper_protocol_accuracy"]


def paper_protocol_accuracy(
    net: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    eps: float = 8 / 255,
    alpha: float = 2 / 255,
    steps: int = 20,
    device: torch.device | str = "cpu",
) -> tuple[int, int, int]:
    """Count ``(clean_correct, robust_correct, total)`` over ``batches`` (pixels in [0, 1]).

    ``net`` is put in eval mode (and restored). Each batch: clean prediction with a fresh draw; PGD
    (``steps``, ``eps``, ``alpha``, random start) with one frozen draw per DCS layer; prediction on the
    adversarial batch with a fresh draw. For a network without DCS layers the freeze is a no-op.
    """
    was_training = net.training
    net.eval()
    attack = make_pgd(net, eps, alpha, steps)
    has_dcs = next(dcs_layers(net), None) is not None
    clean = robust = total = 0
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            with torch.no_grad():
                clean += int((net(x).argmax(1) == y).sum())
            with frozen_taps(net) if has_dcs else contextlib.nullcontext():
                x_adv = attack(x, y)
            with torch.no_grad():
                robust += int((net(x_adv).argmax(1) == y).sum())
            total += y.numel()
    finally:
        net.train(was_training)
    return clean, robust, total
