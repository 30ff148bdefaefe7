"""The two protocols: the paper's (Algorithm 2) and the adaptive one.

- paper protocol: per batch the attack runs inside ``frozen_taps`` (one draw for all its
  iterations); the prediction is one fresh draw per image. Repeated with different seeds.
- adaptive protocol: attacks see the tap distribution (EOT over batched draws, the exact expectation
  over every tap set, Square judged on the average of many forwards), plus known-taps and transfer.
  Every adversarial input is scored by ``Scorer``: per image, the probability that a fresh draw
  classifies it correctly, exact over all tap sets where they can be enumerated, else from the same
  independent draws per image for every input. The worst case is, per image, the minimum of those
  probabilities over the attacks, so it is never above a row it covers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torchattacks
from torch import nn

from ..progress import bar
from ..sampling import dcs_layers
from ..text import plural
from .attacks import (
    AttackFn,
    ExpectedModel,
    apgd,
    autoattack_paper,
    deepfool,
    margin_pgd,
    pgd,
    square,
    torchattacks_attack,
)
from .context import EvalContext, frozen_if_random
from .draws import all_tap_sets, n_tap_sets
from .reference import reference_attacks
from .scoring import Accuracy

__all__ = [
    "ADAPTIVE_LABEL",
    "PAPER_LABEL",
    "ProtocolResult",
    "known_taps_batch",
    "run_adaptive",
    "run_paper",
]

PAPER_LABEL = "paper protocol (attack and prediction use different taps)"
ADAPTIVE_LABEL = "adaptive protocol (attacks see the tap distribution; each input scored over the tap draw)"


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
        aa = (
            f"AutoAttack reduced: APGD-CE + APGD-T ({b.apgd_steps} it., "
            f"{plural(b.apgdt_targets, 'target class', 'target classes')})"
        )
    return {
        f"PGD-{b.pgd_steps}": (
            f"PGD, {plural(b.pgd_steps, 'step')}, step eps/4, random start",
            pgd(m, eps, b.pgd_steps),
        ),
        "AutoAttack": (
            aa,
            autoattack_paper(m, eps, ctx.n_classes, seed, b.autoattack, b.apgd_steps, b.apgdt_targets),
        ),
        "CW": (
            f"CW-L2 (torchattacks), c=1, lr 0.01, {plural(b.cw_steps, 'step')} (unbounded L2)",
            torchattacks_attack(torchattacks.CW(m, c=1, kappa=0, steps=b.cw_steps, lr=0.01)),
        ),
        "MIFGSM": (
            f"MI-FGSM, {plural(b.mifgsm_steps, 'step')}, decay 1.0",
            torchattacks_attack(
                torchattacks.MIFGSM(m, eps=eps, alpha=eps / 4, steps=b.mifgsm_steps, decay=1.0)
            ),
        ),
        "DeepFool": (
            f"DeepFool-L2 (batched), {plural(b.deepfool_steps, 'step')}, overshoot 0.02 (unbounded L2)",
            deepfool(m, b.deepfool_steps, 0.02),
        ),
        "EOTPGD": (
            f"EOTPGD (torchattacks), {plural(b.eotpgd_steps, 'step')} x "
            f"{plural(b.eotpgd_samples, 'EOT iteration')}, taps frozen",
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


def one_draw_per_image(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Verdicts ``[B]`` (True = correct) of one fresh, independent draw per image, and the count of
    non-finite values. One draw serves a whole batch, so one forward per image keeps the images'
    draws independent (a batch-wide draw moves every image's verdict together)."""
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + 1]) for i in range(x.shape[0])])
    finite = torch.isfinite(logits).all(-1)
    return (logits.argmax(1) == y) & finite, int((~finite).sum())


def run_paper(ctx: EvalContext, x: torch.Tensor, y: torch.Tensor, repeats: int) -> ProtocolResult:
    """Algorithm 2: per batch, attack with one frozen draw; predict with one fresh draw per image;
    ``repeats`` seeds. Each row's per-image values are the fraction of repeats that got it right."""
    result = ProtocolResult(PAPER_LABEL)
    per_repeat: dict[str, list[torch.Tensor]] = {}
    model = ctx.model
    for r in range(repeats):
        torch.manual_seed(ctx.seed + r)
        attacks = paper_attacks(ctx, ctx.seed + r)
        correct: dict[str, list[torch.Tensor]] = {"clean": []}
        result.descriptions["clean"] = "no attack"
        progress = bar(
            batches(x, y, ctx.budget.batch_size),
            f"paper protocol, repeat {r + 1}/{repeats}",
            total=-(-x.shape[0] // ctx.budget.batch_size),
        )
        for xb, yb in progress:
            v, bad = one_draw_per_image(model, xb, yb)
            correct["clean"].append(v)
            ctx.nonfinite += bad
            for name, (description, attack) in attacks.items():
                result.descriptions[name] = description
                start = time.perf_counter()
                with ctx.frozen():
                    adv = attack(xb, yb)
                # Fresh draws: the prediction does not see the attack's taps.
                v, bad = one_draw_per_image(model, adv, yb)
                ctx.nonfinite += bad + int((~torch.isfinite(adv)).sum())
                correct.setdefault(name, []).append(v)
                result.seconds[name] = result.seconds.get(name, 0.0) + time.perf_counter() - start
        for name, parts in correct.items():
            per_repeat.setdefault(name, []).append(torch.cat(parts).double().cpu())
    scoring = "one fresh draw per image" if ctx.randomized else "deterministic model: one forward"
    for name, rows in per_repeat.items():
        stacked = torch.stack(rows)  # [repeats, N]
        result.accuracies[name] = Accuracy.of(
            stacked.mean(0), scoring, per_repeat=[float(row.mean()) for row in rows]
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
            f"{plural(ctx.budget.exact_max_sets, 'draw')} per step",
        )
    space = f"C({layer.num_positions},{layer.n})={size}"
    label = f"exact expectation over all {space} tap sets of {ctx.runner.first_name}"
    if layers > 1:
        label += f"; the other {plural(layers - 1, 'DCS layer')} sampled"
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
    eot_margin = ExpectedModel(m, runner, draws=b.margin_samples)
    eot_apgd = ExpectedModel(m, runner, draws=b.apgd_eot)
    tap_sets, exact_label = exact_tap_sets(ctx)
    exact = ExpectedModel(
        m, runner, draws=b.exact_max_sets if tap_sets is None and ctx.randomized else 1, tap_sets=tap_sets
    )
    eot_square = ExpectedModel(m, runner, draws=b.square_eot)
    # Each exact step costs ~300 forward-backward passes: a short run takes steps of 2.5 eps / steps
    # (Madry et al.'s rule) so it can cross the ball; long runs keep the usual eps / 4.
    exact_alpha = max(eps / 4, 2.5 * eps / b.exact_steps)
    attacks: dict[str, tuple[str, AttackFn, bool]] = {
        # The paper protocol's attack, re-scored on K fresh draws: a candidate like any other, so the
        # worst case can never be weaker than the attack the paper reports.
        "PGD (one frozen draw)": (
            f"PGD, {plural(b.pgd_steps, 'step')}, on one frozen draw of taps (the paper's attack)",
            under_one_draw(m, pgd(m, eps, b.pgd_steps)),
            True,
        ),
        "EOT-PGD": (
            f"PGD on E[softmax] over {plural(b.eot_samples, 'batched draw')} per step, "
            f"{plural(b.eot_steps, 'step')}",
            pgd(eot, eps, b.eot_steps),
            True,
        ),
        "APGD-CE (EOT)": (
            f"APGD-CE, {b.apgd_steps} it., EOT over {plural(b.apgd_eot, 'draw')} per step",
            apgd(eot_apgd, eps, b.apgd_steps, "ce", ctx.seed),
            True,
        ),
        "APGD-DLR (EOT)": (
            f"APGD-DLR, {b.apgd_steps} it., EOT over {plural(b.apgd_eot, 'draw')} per step",
            apgd(eot_apgd, eps, b.apgd_steps, "dlr", ctx.seed + 1),
            True,
        ),
        "exact expectation": (
            f"PGD, {plural(b.exact_steps, 'step')} of {exact_alpha / eps:.2g} eps, {exact_label}",
            pgd(exact, eps, b.exact_steps, alpha=exact_alpha),
            True,
        ),
        "Square (EOT)": (
            f"Square (gradient-free), {b.square_queries} queries; loss and early stop on the mean of "
            f"{plural(b.square_eot, 'forward')}",
            square(eot_square, eps, b.square_queries, ctx.seed),
            True,
        ),
    }
    if b.margin_steps > 0:
        attacks["EOT-PGD (margin)"] = (
            f"PGD on the margin of log E[softmax] over {plural(b.margin_samples, 'batched draw')} per step, "
            f"{plural(b.margin_steps, 'step')}, each image's best iterate",
            margin_pgd(eot_margin, eps, b.margin_steps),
            True,
        )
    if ctx.transfer_source is not None:
        attacks["transfer"] = (
            f"PGD, {plural(b.transfer_steps, 'step')}, on the same network trained without DCS",
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
    """Known-taps attack on one batch: one draw frozen for the PGD attack and for the prediction.

    Returns ``(x_adv, verdicts [B] (True = correct), the frozen taps {layer: LongTensor[n]} or None)``.
    """
    with ctx.frozen() as taps:
        adv = pgd(ctx.model, ctx.eps, ctx.budget.known_steps)(x, y)
        with torch.no_grad():
            logits = ctx.model(adv)
    finite = torch.isfinite(logits).all(-1)
    ctx.nonfinite += int((~finite).sum())
    return adv, (logits.argmax(1) == y) & finite, taps


def run_adaptive(ctx: EvalContext, x: torch.Tensor, y: torch.Tensor) -> ProtocolResult:
    """Every adaptive attack on every image, each input scored by ``ctx.scorer``; AutoAttack rand and
    the worst case are per-image minima of the scored probabilities of their members."""
    b, scorer, k = ctx.budget, ctx.scorer, ctx.budget.all_correct_k
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
    result.notes.append(f"scoring: {scorer.method}")
    probs: dict[str, torch.Tensor] = {"clean": scorer(x, y)}
    result.descriptions["clean"] = "no attack"
    members: list[str] = []
    for name, (description, attack, worst) in attacks.items():
        start = time.perf_counter()
        count = -(-x.shape[0] // b.batch_size)
        progress = bar(batches(x, y, b.batch_size), f"adaptive: {name}", total=count)
        adv = torch.cat([attack(xb, yb) for xb, yb in progress])
        ctx.nonfinite += int((~torch.isfinite(adv)).sum())
        probs[name] = scorer(adv, y)
        result.seconds[name] = time.perf_counter() - start
        result.descriptions[name] = description
        if worst:
            members.append(name)
    for name, group, description in (
        ("AutoAttack rand", ("APGD-CE (EOT)", "APGD-DLR (EOT)"), "per image the worse of APGD-CE/-DLR (EOT)"),
        ("worst case", tuple(members), "per image the minimum over every attack above (known taps apart)"),
    ):
        probs[name] = torch.stack([probs[m] for m in group]).min(0).values
        result.descriptions[name] = description
    for name, p in probs.items():
        result.accuracies[name] = Accuracy.of(p, scorer.method, k)
    # Known taps: one draw frozen for the attack and the prediction (the damage if a draw leaks); a
    # different threat model, so it stays out of the worst case.
    start = time.perf_counter()
    verdicts = torch.cat([known_taps_batch(ctx, xb, yb)[1] for xb, yb in batches(x, y, b.batch_size)])
    result.seconds["known taps"] = time.perf_counter() - start
    result.descriptions["known taps"] = (
        f"PGD, {plural(b.known_steps, 'step')}, one draw frozen for attack and prediction "
        "(the damage if a draw leaks)"
    )
    result.accuracies["known taps"] = Accuracy.of(
        verdicts.double().cpu(), "the attack's own draw (one frozen draw per batch)"
    )
    return result
