"""Attacks, as batched functions ``attack(x, y) -> x_adv`` built on torchattacks.

The attacks themselves are torchattacks'; what is ours is the model they see:

- ``ExpectedModel``: ``log E[softmax]`` over M tap draws computed in one batched run (``DrawRunner``),
  so any torchattacks attack becomes its EOT version (the gradient of ``-log E[p_y]`` averages the
  draws' gradients, weighted by their probability), and Square's accept/early-stop decisions are made
  on the average of M forwards, never on one lucky draw. With ``tap_sets`` = every tap set of the
  layer it is the exact expectation, with no sampling noise.
- the paper protocol's attacks run on the model itself inside ``frozen_taps`` (one draw for all
  iterations); see ``protocols``.

torchattacks' APGD, APGD-T, FAB and Square reseed torch's global generator with their fixed ``seed`` on
every call. Each of our wrappers runs them inside ``isolated_rng``: one draw from the caller's stream
seeds both the attack and a forked generator, so the caller's stream (the tap draws of the rows and
batches that follow) never repeats, and no two calls replay the same draws.

DeepFool is reimplemented batched (torchattacks' loops over images one by one in Python); its update
is torchattacks' (L2, ``x <- x + (1 + overshoot) * |f_l| w_l / ||w_l||^2`` towards the nearest class).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torchattacks
from torch import nn

from ..attacks import make_pgd
from .draws import DrawRunner, TapSets, log_expected_probs

__all__ = [
    "AttackFn",
    "ExpectedModel",
    "apgd",
    "autoattack_paper",
    "deepfool",
    "isolated_rng",
    "margin_pgd",
    "pgd",
    "square",
    "torchattacks_attack",
]

AttackFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _nested(attack: object) -> Iterator[object]:
    """``attack`` and every attack inside it (torchattacks' ``MultiAttack.attacks``, ``AutoAttack``'s)."""
    yield attack
    for child in getattr(attack, "attacks", None) or ():
        yield from _nested(child)
    inner = getattr(attack, "_autoattack", None)
    if inner is not None:
        yield from _nested(inner)


@contextlib.contextmanager
def isolated_rng(*attacks: object) -> Iterator[int]:
    """Run third-party attacks that reseed torch's global generator without touching the caller's stream.

    One draw from the caller's generator becomes the seed of a forked generator (CPU, and every CUDA
    device in use) and of each of ``attacks`` (and the attacks nested in them) that has a ``seed``; the
    caller's stream resumes after that one draw. Yields the seed.
    """
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    for attack in attacks:
        for inner in _nested(attack):
            if hasattr(inner, "seed"):
                inner.seed = seed
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield seed


class ExpectedModel(nn.Module):
    """The expected classifier ``x -> log E_taps[softmax(model(x))]``, ``[B, classes]``.

    Args:
        model: the DCS model (a submodule here, so torchattacks finds its device; its mode is left
            alone, see ``train``).
        runner: the ``DrawRunner`` of ``model``.
        draws: fresh draws per forward (EOT samples), or
        tap_sets: ``[M, n]`` tap sets of the first DCS layer to average over at every forward (exact).
    """

    def __init__(
        self, model: nn.Module, runner: DrawRunner, draws: int = 1, tap_sets: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.runner = runner
        self.draws = draws
        self.tap_sets = tap_sets
        self.training = model.training

    def train(self, mode: bool = True) -> ExpectedModel:
        """Set this wrapper's flag only; the wrapped model's mode belongs to the caller.

        torchattacks switches the model it is given to eval for an attack and then back to the mode
        it found. A wrapper that passed ``train()`` on (``nn.Module``'s default) would leave the
        evaluated model in training mode after the first attack: batch statistics in every later
        forward, and its BatchNorm running statistics overwritten.
        """
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sets = TapSets.given(self.tap_sets) if self.tap_sets is not None else TapSets.sample(self.draws)
        return log_expected_probs(self.runner, x, sets)


def pgd(
    model: nn.Module, eps: float, steps: int, alpha: float | None = None, random_start: bool = True
) -> AttackFn:
    """L_inf PGD (torchattacks, in eval mode) with step ``alpha`` (default eps/4, i.e. 2/255 at 8/255)."""
    return torchattacks_attack(make_pgd(model, eps, alpha or eps / 4, steps, random_start))


def margin_pgd(model: nn.Module, eps: float, steps: int, alpha: float | None = None) -> AttackFn:
    """L_inf PGD on the margin loss ``max_{j != y} z_j - z_y`` of ``model``'s output, keeping per image
    the iterate with the highest margin seen (random start, step ``alpha``, default eps/4).

    On an ``ExpectedModel`` (``z = log E[softmax]``) the margin does not saturate once an image is
    misclassified on most draws, as cross-entropy's gradient does, so it keeps pushing the images
    that only some draws get right: the ones a randomized defense's expected accuracy is made of.
    torchattacks' PGD takes only cross-entropy, hence this loop.
    """
    alpha = alpha or eps / 4

    def margins(x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = model(x_adv)
        true = z.gather(1, y[:, None]).squeeze(1)
        other = z.masked_fill(torch.nn.functional.one_hot(y, z.shape[1]).bool(), float("-inf"))
        return other.max(1).values - true

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
            best, best_margin = x_adv.clone(), torch.full_like(y, float("-inf"), dtype=x.dtype)
            for _ in range(steps):
                x_adv.requires_grad_(True)
                margin = margins(x_adv, y)
                (grad,) = torch.autograd.grad(margin.sum(), x_adv)
                with torch.no_grad():
                    better = margin.detach() > best_margin
                    best[better], best_margin[better] = x_adv.detach()[better], margin.detach()[better]
                    x_adv = torch.min(torch.max(x_adv + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
            with torch.no_grad():
                last = margins(x_adv, y)
                better = last > best_margin
                best[better] = x_adv[better]
        finally:
            model.train(was_training)
        return best.detach()

    return run


def apgd(model: nn.Module, eps: float, steps: int, loss: str, seed: int) -> AttackFn:
    """APGD (torchattacks) at ``steps`` iterations; returns the highest-loss point of every example.

    ``perturb(best_loss=True)`` keeps per example the point of highest loss, instead of the clean
    input for examples the attack's own forward still judged robust: the final verdict is ours
    (scored on K fresh draws), not one forward's.
    """
    attack = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, loss=loss)

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            with isolated_rng(attack):
                _, adv = attack.perturb(x.clone(), y.clone(), best_loss=True)
        finally:
            model.train(was_training)
        return adv.detach()

    return run


def square(model: nn.Module, eps: float, queries: int, seed: int) -> AttackFn:
    """Square attack (torchattacks, margin loss, gradient-free)."""
    return torchattacks_attack(
        torchattacks.Square(
            model, norm="Linf", eps=eps, n_queries=queries, n_restarts=1, loss="margin", seed=seed
        )
    )


def autoattack_paper(
    model: nn.Module, eps: float, n_classes: int, seed: int, mode: str, steps: int, targets: int
) -> AttackFn:
    """The paper protocol's AutoAttack: torchattacks' ``standard`` as shipped, or APGD-CE + APGD-T.

    ``mode="standard"``: ``torchattacks.AutoAttack(version="standard")`` (APGD-CE, APGD-T, FAB-T,
    Square-5000), the tool the paper used. ``mode="apgd"``: its two APGD attacks at ``steps``
    iterations, APGD-T over the ``targets`` most likely wrong classes, for reduced budgets. Under
    ``frozen_taps`` the model is deterministic, so the ensemble's single-forward robustness judgement
    is exact here.
    """
    if mode == "standard":
        return torchattacks_attack(
            torchattacks.AutoAttack(
                model, norm="Linf", eps=eps, version="standard", n_classes=n_classes, seed=seed
            )
        )
    targeted = torchattacks.APGDT(model, eps=eps, steps=steps, seed=seed, n_classes=n_classes)
    targeted.n_target_classes = min(targets, n_classes - 1)
    return torchattacks_attack(
        torchattacks.MultiAttack(
            [torchattacks.APGD(model, eps=eps, steps=steps, seed=seed, loss="ce"), targeted]
        )
    )


def torchattacks_attack(attack: torchattacks.attack.Attack) -> AttackFn:
    """A torchattacks attack as ``(x, y) -> x_adv`` (detached), run inside ``isolated_rng``."""

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with isolated_rng(attack):
            return attack(x, y).detach()

    return run


def deepfool(model: nn.Module, steps: int, overshoot: float = 0.02) -> AttackFn:
    """Batched DeepFool (L2), torchattacks' update; an example stops once the model misclassifies it.

    One forward and ``classes`` backward passes per step for the whole batch (the Jacobian rows are
    gradients of the batch-summed logits, exact because examples do not interact in eval mode).
    """

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = x.clone().detach()
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        was_training = model.training
        model.eval()
        try:
            for _ in range(steps):
                idx = active.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                xa = x_adv[idx].clone().requires_grad_(True)
                logits = model(xa)
                label = y[idx]
                still = logits.argmax(1) == label
                rows = torch.arange(idx.numel(), device=x.device)
                jac = torch.stack(
                    [
                        torch.autograd.grad(logits[:, c].sum(), xa, retain_graph=c + 1 < logits.shape[1])[0]
                        for c in range(logits.shape[1])
                    ],
                    1,
                )  # [b, classes, C, H, W]
                f = (logits - logits[rows, label].unsqueeze(1)).detach()
                w = jac - jac[rows, label].unsqueeze(1)
                norm = w.flatten(2).norm(dim=2).clamp_min(1e-12)
                distance = f.abs() / norm
                distance[rows, label] = float("inf")
                nearest = distance.argmin(1)
                step = (f[rows, nearest].abs() / norm[rows, nearest] ** 2).view(-1, 1, 1, 1) * w[
                    rows, nearest
                ]
                moved = (xa.detach() + (1 + overshoot) * step).clamp(0, 1)
                x_adv[idx[still]] = moved[still]
                active[idx[~still]] = False
        finally:
            model.train(was_training)
        return x_adv.detach()

    return run
