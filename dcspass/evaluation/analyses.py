"""Analyses: gradient cosine similarity between draws (Fig. 4) and accuracy vs attack strength (Fig. 3).

Gradient cosine similarity: the input gradient of the loss under one draw of taps (the attacker's)
against another (the one that predicts). Overall: two independent draws. Split by tap overlap (the
paper's X^s / X^g / X^u, at the first DCS layer, the other layers held fixed): relative to draw A, a
tap of draw B is

- ``s`` (shared): in A, so B reads the same input pixels through the same weights;
- ``g``: not in A, but reading pixels that A's taps read from neighbouring windows (its offset from
  some tap of A is a multiple of the stride on both axes);
- ``u``: reading pixels that no window of A reads.

and B is built from one category only (when it holds n taps), as the paper's hand-made kernels are.

Curves: accuracy vs PGD steps, vs eps, vs EOT samples, with both protocols on one plot: the paper
protocol (attack on one frozen draw, one fresh draw per image predicts) and the adaptive one
(EOT-PGD, scored on ``budget.sweep_draws`` independent draws per image); every point carries its
95 % interval over images, which holds the draw noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layers import DCSConv2d
from ..sampling import using_taps
from ..text import plural
from .attacks import ExpectedModel, pgd
from .context import EvalContext
from .protocols import batches, one_draw_per_image
from .scoring import Accuracy, Scorer

__all__ = ["gradient_cosine", "overlap_classes", "sweeps"]


def input_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d(cross-entropy summed over the batch)/dx, flattened: ``[B, C*H*W]``."""
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad.flatten(1)


def overlap_classes(layer: DCSConv2d, taps: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split the k*k positions into ``s`` / ``g`` / ``u`` relative to the draw ``taps`` (see module doc)."""
    k = layer.kernel_size
    pos = torch.arange(k * k)
    rows, cols = pos // k, pos % k
    a = taps.cpu()
    dr = (rows.view(-1, 1) - (a // k).view(1, -1)) * layer.dilation[0]
    dc = (cols.view(-1, 1) - (a % k).view(1, -1)) * layer.dilation[1]
    aligned = ((dr % layer.stride[0] == 0) & (dc % layer.stride[1] == 0)).any(1)
    shared = torch.zeros(k * k, dtype=torch.bool)
    shared[a] = True
    return {"s": pos[shared], "g": pos[aligned & ~shared], "u": pos[~aligned]}


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a, b, dim=1, eps=1e-20)


def _stats(values: list[torch.Tensor]) -> dict:
    """Mean, std, count and the 5/25/50/75/95 % quantiles (spread that stays inside [-1, 1])."""
    if not values:
        return {"mean": None, "std": None, "count": 0, "quantiles": None}
    v = torch.cat(values).double()
    q = torch.quantile(v, torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64))
    return {
        "mean": float(v.mean()),
        "std": float(v.std()) if v.numel() > 1 else 0.0,
        "count": int(v.numel()),
        "quantiles": dict(zip(("q05", "q25", "median", "q75", "q95"), q.tolist(), strict=True)),
    }


def gradient_cosine(ctx: EvalContext, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Cosine similarity of input gradients between draws: overall and by overlap class (s / g / u).

    Returns ``{"overall": {mean, std, count}, "s": ..., "g": ..., "u": ..., "layer": name}``; a class
    with fewer than n positions for a draw is skipped for that draw (count says how many went in).
    """
    model, layer, name = ctx.model, ctx.runner.first_layer, ctx.runner.first_name
    out: dict[str, list[torch.Tensor]] = {"overall": [], "s": [], "g": [], "u": []}
    gen = torch.Generator().manual_seed(ctx.seed)
    for xb, yb in batches(x, y, ctx.budget.batch_size):
        for _ in range(ctx.budget.cosine_pairs):
            with ctx.frozen() as drawn:
                g_a = input_gradient(model, xb, yb)
                if layer is not None:
                    taps_a = drawn[name]
                    for cls, pool in overlap_classes(layer, taps_a).items():
                        if pool.numel() < layer.n:
                            continue
                        pick = pool[torch.randperm(pool.numel(), generator=gen)[: layer.n]].sort().values
                        with using_taps(model, {name: pick.to(taps_a.device)}):
                            out[cls].append(_cos(g_a, input_gradient(model, xb, yb)))
            with ctx.frozen():
                out["overall"].append(_cos(g_a, input_gradient(model, xb, yb)))
    result = {key: _stats(v) for key, v in out.items()}
    result["layer"] = name if layer is not None else None
    return result


def _paper_accuracy(ctx: EvalContext, x: torch.Tensor, y: torch.Tensor, attack) -> Accuracy:
    verdicts = []
    for xb, yb in batches(x, y, ctx.budget.batch_size):
        with ctx.frozen():
            adv = attack(xb, yb)
        v, bad = one_draw_per_image(ctx.model, adv, yb)
        ctx.nonfinite += bad
        verdicts.append(v)
    return Accuracy.of(torch.cat(verdicts).double().cpu(), "one fresh draw per image")


def _adaptive_accuracy(
    ctx: EvalContext, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, draws: int
) -> Accuracy:
    attack = pgd(ExpectedModel(ctx.model, ctx.runner, draws=draws), eps, steps)
    adv = torch.cat([attack(xb, yb) for xb, yb in batches(x, y, ctx.budget.batch_size)])
    scorer = Scorer(ctx.runner, 0, ctx.budget.sweep_draws, ctx.seed)  # max_sets 0: always sampled
    probs = scorer(adv, y)
    ctx.nonfinite += scorer.nonfinite
    return Accuracy.of(probs, scorer.method)


def sweeps(ctx: EvalContext, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Accuracy vs PGD steps, eps and EOT samples, paper and adaptive protocols side by side.

    Points shared by several curves (e.g. eps 8/255 at the default steps) are computed once. The
    paper protocol's EOT curve is computed as PGD: with the taps frozen, torchattacks' EOTPGD averages
    ``eot_iter`` identical gradients, so it is PGD exactly (the flat line is the point of the curve).

    Returns ``{"steps"|"eps"|"eot": {"values", "paper", "adaptive", "paper_interval",
    "adaptive_interval", "fixed", "examples"}}``: accuracies and their 95 % intervals ``[low, high]``.
    """
    b, eps = ctx.budget, ctx.eps
    cache: dict[tuple, Accuracy] = {}

    def paper(e: float, steps: int) -> Accuracy:
        key = ("paper", round(e * 255, 6), steps)
        if key not in cache:
            cache[key] = _paper_accuracy(ctx, x, y, pgd(ctx.model, e, steps))
        return cache[key]

    def adaptive(e: float, steps: int, draws: int) -> Accuracy:
        key = ("adaptive", round(e * 255, 6), steps, draws)
        if key not in cache:
            cache[key] = _adaptive_accuracy(ctx, x, y, e, steps, draws)
        return cache[key]

    torch.manual_seed(ctx.seed)
    curves: dict[str, dict] = {
        "steps": {
            "values": list(b.sweep_steps),
            "paper": [paper(eps, s) for s in b.sweep_steps],
            "adaptive": [adaptive(eps, s, b.eot_samples) for s in b.sweep_steps],
            "fixed": f"eps={eps * 255:.1f}/255; adaptive EOT over {plural(b.eot_samples, 'draw')}",
        },
        "eps": {
            "values": [e * 255 for e in b.sweep_eps],
            "paper": [paper(e, b.pgd_steps) for e in b.sweep_eps],
            "adaptive": [adaptive(e, b.eot_steps, b.eot_samples) for e in b.sweep_eps],
            "fixed": (
                f"paper PGD-{b.pgd_steps}; adaptive EOT-PGD-{b.eot_steps} x {plural(b.eot_samples, 'draw')}; "
                "eps /255"
            ),
        },
        "eot": {
            "values": list(b.sweep_eot),
            "paper": [paper(eps, b.eot_steps) for _ in b.sweep_eot],
            "adaptive": [adaptive(eps, b.eot_steps, e) for e in b.sweep_eot],
            "fixed": (
                f"eps={eps * 255:.1f}/255, {plural(b.eot_steps, 'step')}; "
                "paper: EOTPGD with taps frozen (= PGD)"
            ),
        },
    }
    for curve in curves.values():
        for protocol in ("paper", "adaptive"):
            points = curve[protocol]
            curve[protocol] = [a.mean for a in points]
            curve[f"{protocol}_interval"] = [[a.low, a.high] for a in points]
        curve["examples"] = int(x.shape[0])
    return curves
