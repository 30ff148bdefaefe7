"""Sanity checks of an evaluation, each a verdict (pass / fail / skipped) with the numbers behind it.

They are the warning lights of gradient masking and broken attacks (Athalye et al. 2018, Carlini et
al. 2019): accuracy must fall towards 0 as eps grows; more steps or EOT samples must not raise it
beyond noise (disjoint 95 % intervals); a gradient-free attack must not beat the gradient-based ones
by a wide margin; the taps must really change between forwards; no NaN or inf anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..sampling import dcs_layers
from .context import EvalContext
from .protocols import ProtocolResult
from .stats import paired_difference

__all__ = [
    "GRADIENT_FREE_MARGIN",
    "LARGE_EPS_MAX_ACCURACY",
    "SanityCheck",
    "check_eps_to_zero",
    "check_finite",
    "check_gradient_free",
    "check_monotone",
    "check_taps_change",
]

# Accuracy allowed at eps >= 32/255 (on the [0, 1] scale): "towards 0", with room for a few examples.
LARGE_EPS_MAX_ACCURACY = 0.10
# How far a gradient-free attack may beat the best gradient-based one before it signals masking.
GRADIENT_FREE_MARGIN = 0.10


@dataclass
class SanityCheck:
    """One check: ``passed`` is True / False, or None when it could not run (``detail`` says why)."""

    name: str
    passed: bool | None
    detail: str
    numbers: dict = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "FAIL", None: "skipped"}[self.passed]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "passed": self.passed,
            "verdict": self.verdict,
            "detail": self.detail,
            "numbers": self.numbers,
        }


def _rises(curve: dict, protocol: str) -> list[str]:
    """Steps along a curve where accuracy rises with the attack's strength beyond noise: the stronger
    point's 95 % interval lies wholly above the weaker one's."""
    values, intervals, acc = curve["values"], curve[f"{protocol}_interval"], curve[protocol]
    return [
        f"{protocol}: {acc[i]:.3f} -> {acc[i + 1]:.3f} at {values[i]:.4g} -> {values[i + 1]:.4g}"
        for i in range(len(acc) - 1)
        if intervals[i + 1][0] > intervals[i][1]
    ]


def check_eps_to_zero(curves: dict | None) -> SanityCheck:
    """Adaptive accuracy at the largest eps of the sweep (>= 32/255) is near 0, and falls with eps."""
    name = "accuracy falls towards 0 as eps grows"
    if not curves or "eps" not in curves:
        return SanityCheck(name, None, "no eps sweep was run")
    curve = curves["eps"]
    eps, acc, n = curve["values"], curve["adaptive"], curve["examples"]
    if max(eps) < 32 - 1e-6:
        return SanityCheck(
            name,
            None,
            f"the eps sweep stops at {max(eps):.1f}/255, below 32/255",
            {"eps": eps, "accuracy": acc},
        )
    last = eps.index(max(eps))
    low = curve["adaptive_interval"][last][0]
    rises = _rises(curve, "adaptive")
    ok = low <= LARGE_EPS_MAX_ACCURACY and not rises
    detail = (
        f"accuracy {acc[last]:.3f} (95 % interval from {low:.3f}) at eps {max(eps):.0f}/255 "
        f"(limit {LARGE_EPS_MAX_ACCURACY:.2f})"
    )
    if rises:
        detail += f"; rises beyond noise: {rises}"
    return SanityCheck(name, ok, detail, {"eps_255": eps, "accuracy": acc, "examples": n})


def check_monotone(curves: dict | None, key: str, what: str) -> SanityCheck:
    """Along a sweep, accuracy never rises beyond noise (disjoint 95 % intervals) with the attack."""
    name = f"more {what} never raise accuracy"
    if not curves or key not in curves:
        return SanityCheck(name, None, f"no {what} sweep was run")
    curve = curves[key]
    values, n = curve["values"], curve["examples"]
    bad = _rises(curve, "adaptive") + _rises(curve, "paper")
    detail = "; ".join(bad) if bad else f"non-increasing within 95 % intervals over {values} ({n} images)"
    return SanityCheck(
        name, not bad, detail, {"values": values, "adaptive": curve["adaptive"], "paper": curve["paper"]}
    )


def check_gradient_free(adaptive: ProtocolResult | None) -> SanityCheck:
    """Square (EOT) must not beat the best gradient-based attack by more than the margin, beyond noise
    (the paired 95 % interval of the difference on the same images)."""
    name = "gradient-free does not beat gradient-based"
    if adaptive is None or "Square (EOT)" not in adaptive.accuracies:
        return SanityCheck(name, None, "the adaptive protocol was not run")
    acc = adaptive.accuracies
    gradient_based = {
        k: acc[k].mean
        for k in ("EOT-PGD", "EOT-PGD (margin)", "APGD-CE (EOT)", "APGD-DLR (EOT)", "exact expectation")
        if k in acc
    }
    best_name = min(gradient_based, key=gradient_based.get)
    best, free = gradient_based[best_name], acc["Square (EOT)"].mean
    diff = paired_difference(acc[best_name].per_example, acc["Square (EOT)"].per_example)
    ok = diff.low <= GRADIENT_FREE_MARGIN
    # diff is gradient-based minus Square: positive when Square, gradient-free, is the stronger attack.
    gap = round(diff.mean, 3)
    relation = f"Square is {'lower' if gap > 0 else 'higher'} by {abs(gap):.3f}" if gap else "the same"
    detail = (
        f"Square (EOT) {free:.3f} vs best gradient-based {best_name} {best:.3f}: {relation} "
        f"(gradient-based minus Square {diff.mean:.3f} [{diff.low:.3f}, {diff.high:.3f}]; fails when that "
        f"whole interval exceeds {GRADIENT_FREE_MARGIN}: gradient masking)"
    )
    return SanityCheck(
        name, ok, detail, {"square": free, "gradient_based": gradient_based, "difference": diff.to_dict()}
    )


def check_taps_change(ctx: EvalContext, x: torch.Tensor, forwards: int = 10) -> SanityCheck:
    """Every DCS layer uses more than one tap set over ``forwards`` forwards, and the logits differ."""
    name = "taps change between forwards"
    layers = list(dcs_layers(ctx.model))
    if not layers:
        return SanityCheck(name, None, "the model has no DCS layer: it is deterministic")
    seen: dict[str, set] = {n: set() for n, _ in layers}
    originals = {}
    for lname, layer in layers:
        originals[lname] = layer.draw_taps

        def recording(layer=layer, lname=lname, draw=layer.draw_taps):
            taps = draw()
            seen[lname].add(tuple(taps.tolist()))
            return taps

        layer.draw_taps = recording  # instance attribute shadows the method for this check only
    try:
        with torch.no_grad():
            outs = [ctx.model(x[:4]) for _ in range(forwards)]
    finally:
        for _, layer in layers:
            del layer.draw_taps
    distinct = {k: len(v) for k, v in seen.items()}
    differ = any(not torch.equal(outs[0], o) for o in outs[1:])
    ok = all(v > 1 for v in distinct.values()) and differ
    detail = (
        f"distinct tap sets over {forwards} forwards: {distinct}; logits differ between forwards: {differ}"
    )
    return SanityCheck(name, ok, detail, {"distinct_tap_sets": distinct, "logits_differ": differ})


def check_finite(ctx: EvalContext) -> SanityCheck:
    """No NaN or inf in any adversarial input or any logit scored."""
    count = ctx.nonfinite + ctx.scorer.nonfinite
    return SanityCheck(
        "no NaN/inf",
        count == 0,
        f"{count} non-finite values in adversarial inputs and logits",
        {"nonfinite": count},
    )
