"""Training methods as strategies: what one batch contributes to the loss.

The loop (``engine.train``) is the same for all three; a method only says how to turn ``(x, y)`` into
a loss. Attacks run with torchattacks' PGD (``dcspass.attacks.make_pgd``) in **eval mode** (BatchNorm
uses its running statistics and is not updated by the attack's forwards); the training forward that
follows runs in train mode.

- ``CleanTraining``: cross-entropy on the clean batch.
- ``PGDAdversarialTraining`` (Madry et al.): cross-entropy on a PGD adversarial batch.
- ``GSAT`` (the paper's Algorithm 1): the PGD attack runs with one frozen draw of taps per DCS layer,
  recorded through ``dcspass.instrument`` (X^s); the training forward draws its taps from the
  complement (``dcspass.excluding_taps``), so the weights are never updated along the attacked paths.
- ``FrozenDrawPGDAT`` (``"frozen_pgd_at"``): GSAT's attack (one frozen draw) with an unrestricted
  training draw: GSAT but for the exclusion, the comparison of the paper's Fig. 4a.

The PGD random start is torchattacks': uniform in the eps-ball (Algorithm 1 writes a Gaussian start).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import make_pgd
from ..errors import ConfigError
from ..sampling import excluding_taps, frozen_taps

__all__ = [
    "GSAT",
    "CleanTraining",
    "FrozenDrawPGDAT",
    "PGDAdversarialTraining",
    "TrainingMethod",
    "make_method",
]


class TrainingMethod:
    """Strategy interface. ``bind`` once with the bare network, then ``loss`` per batch.

    ``loss(model, x, y)`` returns ``(loss, logits)`` of the training forward; ``model`` is the network
    the optimiser steps (possibly wrapped in DDP or torch.compile), while attacks use the bare
    network given to ``bind`` (no gradient synchronisation for attack passes).
    """

    name = "base"

    def bind(self, net: nn.Module, compile: bool = False) -> None:
        self.net = net

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class CleanTraining(TrainingMethod):
    """Standard training on clean examples."""

    name = "clean"

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return F.cross_entropy(logits, y), logits


class PGDAdversarialTraining(TrainingMethod):
    """Madry et al.: train on PGD(eps, alpha, steps) examples, with a random start."""

    name = "pgd_at"

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 7) -> None:
        self.eps, self.alpha, self.steps = eps, alpha, steps

    def bind(self, net: nn.Module, compile: bool = False) -> None:
        self.net = net
        self.attack = make_pgd(torch.compile(net) if compile else net, self.eps, self.alpha, self.steps)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv = self.attack(x, y)
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits


class GSAT(PGDAdversarialTraining):
    """Gradient-Selective Adversarial Training (Algorithm 1).

    After each ``loss`` call, ``last_attack_taps`` holds the taps the attack used
    (``{qualified_name: LongTensor[n]}``, read from the instrumented network's ``captured_taps``).
    """

    name = "gsat"
    exclude_attacked = True

    def bind(self, net: nn.Module, compile: bool = False) -> None:
        from ..instrumentation import instrument

        self.net = net
        self.instrumented = instrument(net)
        shared = {id(p) for p in net.parameters()}
        if any(id(p) not in shared for p in self.instrumented.parameters()):
            raise ConfigError("GSAT: instrument(net) must share the network's parameters")
        attacked = torch.compile(self.instrumented) if compile else self.instrumented
        self.attack = make_pgd(attacked, self.eps, self.alpha, self.steps)
        self.last_attack_taps: dict[str, torch.Tensor] = {}

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Steps 6-10: one draw of taps, frozen for every PGD iteration.
        with frozen_taps(self.instrumented):
            x_adv = self.attack(x, y)
        # Step 7: X^s, as the instrumented forward recorded it.
        self.last_attack_taps = {name: t.clone() for name, t in self.instrumented.captured_taps.items()}
        # Steps 11-12: resample from the complement of X^s for the training forward (and its backward).
        excluded = self.last_attack_taps if self.exclude_attacked else {}
        with excluding_taps(self.net, excluded) if excluded else contextlib.nullcontext():
            logits = model(x_adv)
        return F.cross_entropy(logits, y), logits


class FrozenDrawPGDAT(GSAT):
    """GSAT without its selection: the attack runs on one frozen draw (as GSAT's), and the training
    forward draws its taps from all k*k positions, attacked ones included. The paper's Fig. 4a
    compares the two to isolate what excluding X^s does."""

    name = "frozen_pgd_at"
    exclude_attacked = False


def make_method(name: str, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 7) -> TrainingMethod:
    """The strategy for ``"clean"``, ``"pgd_at"``, ``"gsat"`` or ``"frozen_pgd_at"``."""
    if name == "clean":
        return CleanTraining()
    if name == "pgd_at":
        return PGDAdversarialTraining(eps, alpha, steps)
    if name == "gsat":
        return GSAT(eps, alpha, steps)
    if name == "frozen_pgd_at":
        return FrozenDrawPGDAT(eps, alpha, steps)
    raise ConfigError(
        f"unknown training method {name!r}; choose 'gsat', 'frozen_pgd_at', 'pgd_at' or 'clean'"
    )
