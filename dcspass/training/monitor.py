"""Per-epoch monitoring: clean and PGD accuracy on a held-out slice, under the paper's protocol.

Paper protocol (Algorithm 2): the attack runs with one draw of taps frozen for all its iterations,
and the prediction uses fresh draws. One draw serves a whole batch, so a single prediction per batch
makes the number swing with the luck of that draw; the prediction is scored instead on ``draws``
fresh draws per chunk of ``DRAW_CHUNK`` images, and the count is the expected number of correct
predictions. (The evaluation engine scores each image on its own draws; this per-chunk estimate is
cheaper and serves the training log.) This is the quick number the training log prints; the
full evaluation (both protocols, adaptive attacks) is ``dcspass.evaluate``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import nn

from ..attacks import make_pgd
from ..sampling import dcs_layers, frozen_taps

__all__ = ["paper_protocol_accuracy"]

# Images that share one draw of taps in the log's estimate: small, so one lucky draw moves few verdicts.
DRAW_CHUNK = 16


def paper_protocol_accuracy(
    net: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    eps: float = 8 / 255,
    alpha: float = 2 / 255,
    steps: int = 20,
    device: torch.device | str = "cpu",
    draws: int = 1,
) -> tuple[float, float, int]:
    """Expected correct counts ``(clean_correct, robust_correct, total)`` over ``batches`` (pixels in [0, 1]).

    ``net`` is put in eval mode (and restored). Each batch: clean predictions on ``draws`` fresh draws;
    PGD (``steps``, ``eps``, ``alpha``, random start) with one frozen draw per DCS layer; predictions on
    the adversarial batch on ``draws`` fresh draws. A count is the mean over draws of the correct
    predictions, so ``clean_correct / total`` is the expected clean accuracy. A network without DCS
    layers is scored on one forward (every draw would agree).
    """
    was_training = net.training
    net.eval()
    attack = make_pgd(net, eps, alpha, steps)
    has_dcs = next(dcs_layers(net), None) is not None
    draws = draws if has_dcs else 1
    clean = robust = 0.0
    total = 0
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            clean += _expected_correct(net, x, y, draws)
            with frozen_taps(net) if has_dcs else contextlib.nullcontext():
                x_adv = attack(x, y)
            robust += _expected_correct(net, x_adv, y, draws)
            total += y.numel()
    finally:
        net.train(was_training)
    return clean, robust, total


def _expected_correct(net: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> float:
    """Mean over ``draws`` fresh draws (fresh per chunk of ``DRAW_CHUNK`` images) of the correct count."""
    correct = 0
    with torch.no_grad():
        for start in range(0, x.shape[0], DRAW_CHUNK):
            xc, yc = x[start : start + DRAW_CHUNK], y[start : start + DRAW_CHUNK]
            for _ in range(draws):
                correct += int((net(xc).argmax(1) == yc).sum())
    return correct / draws
