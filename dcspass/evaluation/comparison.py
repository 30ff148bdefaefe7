"""The paper's Fig. 4a our way: gradient similarity between draws, compared across training methods.

The paper trains the same DCS network three ways (GSAT, ordinary adversarial training, clean
training) and shows, for each, how similar the input gradients of two draws of taps are and how
accurate the network is: GSAT should lower the similarity (an attack on one draw transfers less to
another) while keeping clean accuracy. ``compare_gradient_cosine`` measures this for any set of
models on the same images and draws, with ``gradient_cosine`` (overall and split by tap overlap
X^s / X^g / X^u); ``plot_cosine_comparison`` draws one figure of all of them.

    results = compare_gradient_cosine({"DCS + GSAT": a, "DCS + AT": b, "DCS, clean training": c}, x, y)
    plot_cosine_comparison(results, "fig4a.png")
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import EvaluationError
from .analyses import gradient_cosine
from .budget import Budget, get_budget
from .context import EvalContext
from .draws import DrawRunner
from .scoring import Accuracy

__all__ = ["compare_gradient_cosine", "cosine_comparison_markdown", "plot_cosine_comparison"]

CLASSES = ("overall", "s", "g", "u")
CLASS_LABELS = {"overall": "independent draw", "s": "X^s (same taps)", "g": "X^g", "u": "X^u"}


def compare_gradient_cosine(
    models: Mapping[str, nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    budget: str | Budget = "default",
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, dict]:
    """Gradient cosine similarity between draws and clean accuracy of each model, on the same images.

    Args:
        models: label -> classifier (DCS models; one without DCS layers gets similarity 1 and no split).
        x, y: test images in [0, 1] and labels; the first ``budget.cosine_examples`` are used.
        budget: sets the images, the draw pairs per batch (``cosine_pairs``) and K for clean accuracy.
        seed: the same seed for every model, so each sees the same sequence of random choices.
        device: where to run (default: each model's device).

    Returns:
        ``{label: result}``, each result a dict: ``"cosine"`` (``gradient_cosine(...)``), ``"clean"``
        (expected accuracy over K draws), ``"clean_all_correct"`` (all-K-correct accuracy),
        ``"examples"`` (N) and ``"budget"`` (its name).

    Raises:
        EvaluationError: no models, or no images.
    """
    if not models:
        raise EvaluationError("compare_gradient_cosine needs at least one model")
    b = get_budget(budget)
    if x.shape[0] == 0:
        raise EvaluationError("compare_gradient_cosine got no images")
    results: dict[str, dict] = {}
    for label, model in models.items():
        dev = torch.device(device) if device is not None else next(model.parameters()).device
        model = model.to(dev).eval()
        xs, ys = x[: b.cosine_examples].to(dev), y[: b.cosine_examples].to(dev)
        runner = DrawRunner(model)
        with torch.no_grad():
            classes = int(model(xs[:1]).shape[-1])
        ctx = EvalContext(model, runner, 8 / 255, b, classes, seed)
        torch.manual_seed(seed)
        cosine = gradient_cosine(ctx, xs, ys)
        clean = Accuracy.of(ctx.scorer(xs, ys), ctx.scorer.method, b.all_correct_k)
        results[label] = {
            "cosine": cosine,
            "clean": clean.mean,
            "clean_interval": [clean.low, clean.high],
            "clean_all_correct": clean.all_correct,
            "scoring": clean.scoring,
            "examples": int(xs.shape[0]),
            "budget": b.name,
        }
    return results


def cosine_comparison_markdown(results: Mapping[str, dict]) -> list[str]:
    """A markdown table: one row per model, cosine mean +- std per overlap class, clean accuracy."""
    lines = [
        "| model | " + " | ".join(CLASS_LABELS[c] for c in CLASSES) + " | clean acc (expected / all-K) |",
        "|---|" + "---|" * (len(CLASSES) + 1),
    ]
    for label, r in results.items():
        cells = []
        for c in CLASSES:
            s = r["cosine"].get(c, {})
            cells.append("-" if s.get("mean") is None else f"{s['mean']:.3f} +- {s['std']:.3f}")
        clean = f"{100 * r['clean']:.1f} / {100 * r['clean_all_correct']:.1f} %"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {clean} |")
    return lines


def plot_cosine_comparison(results: Mapping[str, dict], path: str | Path, title: str = "") -> Path:
    """One PNG: per overlap class, each model's mean cosine similarity (bar) with its 25-75 % and
    5-95 % quantiles (thick and thin whiskers, inside [-1, 1]); beside it, clean accuracy with its
    95 % interval. ``title`` names what is compared (model, checkpoints, dataset)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results)
    fig, (ax, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 1.4]})
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        cosine = results[label]["cosine"]
        for j, c in enumerate(CLASSES):
            s = cosine.get(c, {})
            if s.get("mean") is None:
                continue
            pos = j + (i - (len(labels) - 1) / 2) * width
            ax.bar(pos, s["mean"], width, color=f"C{i}", label=label if j == 0 else None)
            q = s.get("quantiles")
            if q:
                ax.vlines(pos, q["q05"], q["q95"], color="black", linewidth=0.8)
                ax.vlines(pos, q["q25"], q["q75"], color="black", linewidth=3)
    ax.set_xticks(range(len(CLASSES)), [CLASS_LABELS[c] for c in CLASSES], fontsize=8)
    ax.set_ylabel("cosine similarity of input gradients")
    ax.axhline(0, color="gray", linewidth=0.6)
    ax.grid(axis="y", alpha=0.3)
    lows = [r["cosine"].get(c, {}).get("quantiles", {}) or {} for r in results.values() for c in CLASSES]
    low = min([0.0, *(q["q05"] for q in lows if q)])
    ax.set_ylim(max(-1.0, low - 0.05), 1.0)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(labels))
    first = next(iter(results.values()))
    ax.set_title(
        f"Gradient similarity between two draws: mean, 25-75 % and 5-95 % quantiles\n"
        f"({first['examples']} images, budget {first['budget']})",
        fontsize=9,
    )
    clean = [100 * results[k]["clean"] for k in labels]
    intervals = [results[k].get("clean_interval") or [results[k]["clean"]] * 2 for k in labels]
    err = [
        [c - 100 * lo for c, (lo, _) in zip(clean, intervals, strict=True)],
        [100 * hi - c for c, (_, hi) in zip(clean, intervals, strict=True)],
    ]
    ax_acc.barh(range(len(labels)), clean, xerr=err, color=[f"C{i}" for i in range(len(labels))], capsize=3)
    ax_acc.set_yticks(range(len(labels)), labels, fontsize=8)  # horizontal bars: long labels never collide
    ax_acc.invert_yaxis()
    ax_acc.set_xlabel("clean accuracy (%), 95 % interval")
    ax_acc.set_xlim(0, 100)
    ax_acc.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
