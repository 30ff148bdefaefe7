"""The two protocols: the paper's (Algorithm 2) and the adaptive one (DESIGN.md §5).

- paper protocol: per batch the attack runs inside ``frozen_taps`` (one draw for all its
  iterations); the prediction is one fresh forward. Repeated with different seeds; mean +- std.
- adaptive protocol: attacks see the tap distribution (EOT over batched draws, the exact expectation
  over every tap set, Square judged on the average of many forwards), plus known-taps and transfer;
  every adversarial input is scored on K fresh draws, and per example the worst input over the
  attacks is kept by its expected accuracy over those draws and ``budget.select_draws`` more, then
  re-scored on K new draws.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torchattacks
from torch import nn

from ..progress import bar
from ..sampling import dcs_layers, frozen_taps
from .attacks import (
    AttackFn,
    ExpectedModel,
    apgd,
    autoattack_paper,
    deepfool,
    pgd,
    square,
    torchattacks_attack,
)
from .budget import Budget
from .draws import DrawRunner, all_tap_sets, n_tap_sets
from .reference import reference_attacks
from .scoring import Accuracy, score_draws, summarize

__all__ = [
    "ADAPTIVE_LABEL",
    "PAPER_LABEL",
    "EvalContext",
    "ProtocolResult",
    "frozen_if_random",
    "known_taps_batch",
    "run_adaptive",
    "run_paper",
]

PAPER_LABEL = "paper protocol (attack and prediction use different taps)"
ADAPTIVE_LABEL = "adaptive protocol (attacks see the tap distribution; scored on K fresh draws)"


@dataclass
class EvalContext:
    """What every protocol and analysis needs: the model, its draw runner, the threat model and budget."""

    model: nn.Module
    runner: DrawRunner
    eps: float
    budget: Budget
    n_classes: int
    seed: int
    transfer_source: nn.Module | None = None
    nonfinite: int = 0

    @property
    def randomized(self) -> bool:
        return not self.runner.deterministic

    def frozen(self) -> contextlib.AbstractContextManager:
        return frozen_if_random(self.model)


@dataclass
class ProtocolResult:
    """Accuracies by attack name, with a label per attack, notes and timings (seconds)."""

    label: str
    accuracies: dict[str, Accuracy] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "accuracies": {k: v.to_dict() for k, v in self.accuracies.items()},
            "descriptions": self.descriptions,
            "notes": self.notes,
            "seconds": self.seconds,
        }


def frozen_if_random(model: nn.Module) -> contextlib.AbstractContextManager:
    """``frozen_taps(model)``, or a no-op for a model without DCS layers."""
    return frozen_taps(model) if any(True for _ in dcs_layers(model)) else contextlib.nullcontext()


def batches(x: torch.Tensor, y: torch.Tensor, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, x.shape[0], size):
        yield x[start : start + size], y[start : start + size]


# -- paper protocol ------------------------------------------------------------------------------


def paper_attacks(ctx: EvalContext, seed: int) -> dict[str, tuple[str, AttackFn]]:
    """The paper's attacks on the model itself (run inside ``frozen_taps`` by ``run_paper``)."""
    b, m, eps = ctx.budget, ctx.model, ctx.eps
    if b.autoattack == "standard":
        aa = "AutoAttack standard (torchattacks: APGD-CE, APGD-T, FAB-T, Square-5000)"
    else:
        aa = f"AutoAttack reduced: APGD-CE + APGD-T ({b.apgd_steps} it., {b.apgdt_targets} target class(es))"
    return {
        f"PGD-{b.pgd_steps}": (
            f"PGD, {b.pgd_steps} steps, step eps/4, random start",
            pgd(m, eps, b.pgd_steps),
        ),
        "AutoAttack": (
            aa,
            autoattack_paper(m, eps, ctx.n_classes, seed, b.autoattack, b.apgd_steps, b.apgdt_targets),
        ),
        "CW": (
            f"CW-L2 (torchattacks), c=1, lr 0.01, {b.cw_steps} steps (unbounded L2)",
            torchattacks_attack(torchattacks.CW(m, c=1, kappa=0, steps=b.cw_steps, lr=0.01)),
        ),
        "MIFGSM": (
            f"MI-FGSM, {b.mifgsm_steps} steps, decay 1.0",
            torchattacks_attack(
                torchattacks.MIFGSM(m, eps=eps, alpha=eps / 4, steps=b.mifgsm_steps, decay=1.0)
            ),
        ),
        "DeepFool": (
            f"DeepFool-L2 (batched), {b.deepfool_steps} steps, overshoot 0.02 (unbounded L2)",
            deepfool(m, b.deepfool_steps, 0.02),
        ),
        "EOTPGD": (
            f"EOTPGD (torchattacks), {b.eotpgd_steps} steps x {b.eotpgd_samples} EOT iterations, taps frozen",
            torchattacks_attack(
                torchattacks.EOTPGD(
                    m,
                    eps=eps,
                    alpha=eps / 4,
                    steps=b.eotpgd_steps,
                    eot_iter=b.eotpgd_samples,
                    random_start=True,
                )
            ),
        ),
    }


def run_paper(ctx: EvalContext, x: torch.Tensor, y: torch.Tensor, repeats: int) -> ProtocolResult:
    """Algorithm 2: per batch, attack with one frozen draw; predict with one fresh draw; ``repeats`` seeds."""
    result = ProtocolResult(PAPER_LABEL)
    per_repeat: dict[str, list[float]] = {}
    model = ctx.model
    for r in range(repeats):
        torch.manual_seed(ctx.seed + r)
        attacks = paper_attacks(ctx, ctx.seed + r)
        correct: dict[str, list[torch.Tensor]] = {"clean": []}
        result.descriptions["clean"] = "no attack, one fresh draw"
        progress = bar(
            batches(x, y, ctx.budget.batch_size),
            f"paper protocol, repeat {r + 1}/{repeats}",
            total=-(-x.shape[0] // ctx.budget.batch_size),
        )
        for xb, yb in progress:
            with torch.no_grad():
                correct["clean"].append(model(xb).argmax(1) == yb)
            for name, (description, attack) in attacks.items():
                result.descriptions[name] = description
                start = time.perf_counter()
                with ctx.frozen():
                    adv = attack(xb, yb)
                with torch.no_grad():
                    logits = model(adv)  # a fresh draw: the prediction does not see the attack's taps
                ctx.nonfinite += int((~torch.isfinite(logits)).sum()) + int((~torch.isfinite(adv)).sum())
                correct.setdefault(name, []).append(logits.argmax(1) == yb)
                result.seconds[name] = result.seconds.get(name, 0.0) + time.perf_counter() - start
        for name, parts in correct.items():
            per_repeat.setdefault(name, []).append(float(torch.cat(parts).float().mean()))
    for name, accs in per_repeat.items():
        t = torch.tensor(accs)
        result.accuracies[name] = Accuracy(
            mean=float(t.mean()),
            std=float(t.std()) if len(accs) > 1 else 0.0,
            repeats=len(accs),
            draws=1,
            examples=int(x.shape[0]),
            per_repeat=accs,
        )
    return result


# -- adaptive protocol ---------------------------------------------------------------------------


def exact_tap_sets(ctx: EvalContext) -> tuple[torch.Tensor | None, str]:
    """The tap sets the exact-expectation attack averages over, and how to label it."""
    layer = ctx.runner.first_layer
    if layer is None:
        return None, "expectation attack on a deterministic model (no DCS layer): plain PGD"
    layers = sum(1 for _ in dcs_layers(ctx.model))
    size = n_tap_sets(layer)
    if size > ctx.budget.exact_max_sets:
        return (
            None,
            f"sampled expectation: {size} tap sets exceed exact_max_sets={ctx.budget.exact_max_sets}; "
            f"{ctx.budget.exact_max_sets} draws per step",
        )
    space = f"C({layer.num_positions},{layer.n})={size}"
    label = f"exact expectation over all {space} tap sets of {ctx.runner.first_name}"
    if layers > 1:
        label += f"; the other {layers - 1} DCS layer(s) sampled"
    return all_tap_sets(layer), label


def adaptive_attacks(
    ctx: EvalContext, notes: list[str] | None = None
) -> dict[str, tuple[str, AttackFn, bool]]:
    """name -> (description, attack, counts towards the worst case).

    ``notes`` receives what the reference AutoAttack rows report (its warnings, its own robust accuracy)
    or why they were skipped.
    """
    b, m, eps, runner = ctx.budget, ctx.model, ctx.eps, ctx.runner
    eot = ExpectedModel(m, runner, draws=b.eot_samples)
    eot_apgd = ExpectedModel(m, runner, draws=b.apgd_eot)
    tap_sets, exact_label = exact_tap_sets(ctx)
    exact = ExpectedModel(
        m, runner, draws=b.exact_max_sets if tap_sets is None and ctx.randomized else 1, tap_sets=tap_sets
    )
    eot_square = ExpectedModel(m, runner, draws=b.square_eot)
    attacks: dict[str, tuple[str, AttackFn, bool]] = {
        # The paper protocol's attack, re-scored on K fresh draws: a candidate like any other, so the
        # worst case can never be weaker than the attack the paper reports.
        "PGD (one frozen draw)": (
            f"PGD, {b.pgd_steps} steps, on one frozen draw of taps (the paper's attack)",
            under_one_draw(m, pgd(m, eps, b.pgd_steps)),
            True,
        ),
        "EOT-PGD": (
            f"PGD on E[softmax] over {b.eot_samples} batched draws per step, {b.eot_steps} steps",
            pgd(eot, eps, b.eot_steps),
            True,
        ),
        "APGD-CE (EOT)": (
            f"APGD-CE, {b.apgd_steps} it., EOT over {b.apgd_eot} draws per step",
            apgd(eot_apgd, eps, b.apgd_steps, "ce", ctx.seed),
            True,
        ),
        "APGD-DLR (EOT)": (
            f"APGD-DLR, {b.apgd_steps} it., EOT over {b.apgd_eot} draws per step",
            apgd(eot_apgd, eps, b.apgd_steps, "dlr", ctx.seed + 1),
            True,
        ),
        "exact expectation": (
            f"PGD, {b.exact_steps} steps, {exact_label}",
            pgd(exact, eps, b.exact_steps),
            True,
        ),
        "Square (EOT)": (
            f"Square (gradient-free), {b.square_queries} queries; loss and early stop on the mean of "
            f"{b.square_eot} forwards",
            square(eot_square, eps, b.square_queries, ctx.seed),
            True,
        ),
    }
    if ctx.transfer_source is not None:
        attacks["transfer"] = (
            f"PGD, {b.transfer_steps} steps, on the same network trained without DCS",
            pgd(ctx.transfer_source, eps, b.transfer_steps),
            True,
        )
    attacks.update(reference_attacks(ctx, notes if notes is not None else []))
    return attacks


def under_one_draw(model: nn.Module, attack: AttackFn) -> AttackFn:
    """``attack`` run with one draw of taps frozen for all its iterations (a fresh draw per call)."""

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with frozen_if_random(model):
            return attack(x, y)

    return run


def known_taps_batch(
    ctx: EvalContext, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor] | None]:
    """Known-taps attack on one batch: one draw frozen for the PGD attack and all K scoring forwards.

    Returns ``(x_adv, verdicts [K, B], the frozen taps {layer: LongTensor[n]} or None)``.
    """
    with ctx.frozen() as taps:
        adv = pgd(ctx.model, ctx.eps, ctx.budget.known_steps)(x, y)
        v, bad = score_draws(ctx.runner, adv, y, ctx.budget.score_draws)
    ctx.nonfinite += bad
    return adv, v, taps


def selection_draws(ctx: EvalContext, adv: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Verdicts ``[select_draws, N]`` of fresh draws used only to choose among attacks (none when
    the model is deterministic: every draw would agree with the scoring ones)."""
    if not ctx.randomized or ctx.budget.select_draws == 0:
        return []
    verdicts, bad = score_draws(ctx.runner, adv, y, ctx.budget.select_draws)  # chunks the images itself
    ctx.nonfinite += bad
    return [verdicts]


def run_adaptive(ctx: EvalContext, x: torch.Tensor, y: torch.Tensor) -> ProtocolResult:
    """Every adaptive attack, scored on K fresh draws; AutoAttack-rand and the per-example worst case derived.

    An attack with a smaller image budget (the exact expectation: ``budget.exact_examples``) runs on
    the first images only; its row says how many, and the worst case uses it where it ran.
    """
    b, runner, k = ctx.budget, ctx.runner, ctx.budget.score_draws
    result = ProtocolResult(ADAPTIVE_LABEL)
    torch.manual_seed(ctx.seed)
    attacks = adaptive_attacks(ctx, result.notes)
    if not ctx.randomized:
        result.notes.append(
            "the model has no DCS layer: it is deterministic, so EOT and expectation attacks reduce to "
            "plain ones"
        )
    if ctx.transfer_source is None:
        result.notes.append("transfer: skipped (no transfer_source given)")

    def scored(adv: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        v, bad = score_draws(runner, adv, yb, k)
        ctx.nonfinite += bad
        return v

    verdicts: dict[str, torch.Tensor] = {
        "clean": torch.cat([scored(xb, yb) for xb, yb in batches(x, y, b.batch_size)], 1)
    }
    result.descriptions["clean"] = "no attack"
    candidates: dict[str, torch.Tensor] = {}
    for name, (description, attack, worst) in attacks.items():
        limit = b.exact_examples if name == "exact expectation" else x.shape[0]
        xs, ys = x[:limit], y[:limit]
        start = time.perf_counter()
        advs, vs = [], []
        count = -(-xs.shape[0] // b.batch_size)
        progress = bar(batches(xs, ys, b.batch_size), f"adaptive: {name}", total=count)
        for xb, yb in progress:
            advs.append(attack(xb, yb))
            vs.append(scored(advs[-1], yb))
        result.seconds[name] = time.perf_counter() - start
        result.descriptions[name] = description + (
            f" (first {xs.shape[0]} images)" if limit < x.shape[0] else ""
        )
        verdicts[name] = torch.cat(vs, 1)
        if worst:
            candidates[name] = torch.cat(advs)
    # Known taps: one draw frozen for the attack and for every scoring forward (the draw leaked).
    start = time.perf_counter()
    vs = []
    for xb, yb in batches(x, y, b.batch_size):
        _, v, _ = known_taps_batch(ctx, xb, yb)
        vs.append(v)
    verdicts["known taps"] = torch.cat(vs, 1)
    result.seconds["known taps"] = time.perf_counter() - start
    result.descriptions["known taps"] = (
        f"PGD, {b.known_steps} steps, one draw frozen for attack and prediction (the damage if a draw leaks)"
    )
    # Derived rows: per example the input with the lowest expected accuracy over the K scoring draws
    # and ``select_draws`` more, re-scored on K fresh draws. Choosing on the scoring draws alone is
    # noisy at small K, and scoring the choice on the draws it was chosen on would bias it downwards.
    select = {
        m: torch.cat([verdicts[m], *selection_draws(ctx, candidates[m], y[: candidates[m].shape[0]])])
        for m in candidates
    }
    for name, members, description in (
        (
            "AutoAttack rand",
            ("APGD-CE (EOT)", "APGD-DLR (EOT)"),
            "per example the worse of APGD-CE/-DLR (EOT)",
        ),
        (
            "worst case",
            tuple(candidates),
            "per example the worst input over the attacks above except known taps",
        ),
    ):
        acc = torch.full((len(members), x.shape[0]), float("inf"), device=x.device)
        advs = x.unsqueeze(0).repeat(len(members), *[1] * x.dim())
        for i, m in enumerate(members):
            n = candidates[m].shape[0]
            acc[i, :n] = select[m].float().mean(0)
            advs[i, :n] = candidates[m]
        pick = acc.argmin(0)
        chosen = advs[pick, torch.arange(x.shape[0], device=x.device)]
        verdicts[name] = torch.cat([scored(xb, yb) for xb, yb in batches(chosen, y, b.batch_size)], 1)
        result.descriptions[name] = description + (
            f", by expected accuracy over {k + b.select_draws if ctx.randomized else k} draws, "
            "re-scored on K fresh draws"
        )
    for name, v in verdicts.items():
        result.accuracies[name] = summarize(v)
    return result
