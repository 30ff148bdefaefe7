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
from .draws import DrawRunner
from .protocols import EvalContext
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
        ``{label: {"cosine": gradient_cosine(...), "clean": expected accuracy over K draws,
        "clean_all_correct": all-K-correct accuracy, "examples": N, "budget": name}}``.

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


def plot_cosine_comparison(results: Mapping[str, dict], path: str | Path) -> Path:
    """One PNG: grouped bars of cosine similarity per overlap class for each model, and clean accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results)
    fig, (ax, ax_acc) = plt.subplots(
        1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [3, max(1, len(labels)) * 0.6]}
    )
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        cosine = results[label]["cosine"]
        means = [cosine.get(c, {}).get("mean") for c in CLASSES]
        stds = [cosine.get(c, {}).get("std") for c in CLASSES]
        xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(CLASSES))]
        ax.bar(
            [p for p, m in zip(xs, means, strict=True) if m is not None],
            [m for m in means if m is not None],
            width,
            yerr=[s for s, m in zip(stds, means, strict=True) if m is not None],
            capsize=3,
            label=label,
        )
    ax.set_xticks(range(len(CLASSES)), [CLASS_LABELS[c] for c in CLASSES])
    ax.set_ylabel("cosine similarity of input gradients")
    ax.axhline(0, color="gray", linewidth=0.6)
    ax.grid(axis="y", alpha=0.3)
    means = [r["cosine"].get(c, {}).get("mean") for r in results.values() for c in CLASSES]
    low = min([0.0, *(m for m in means if m is not None)])
    ax.set_ylim(low - 0.05, 1.3)  # headroom for the legend above the bars
    ax.legend(fontsize=8, loc="upper center", ncol=len(labels))
    first = next(iter(results.values()))
    ax.set_title(
        f"Gradient similarity between two draws ({first['examples']} images, budget {first['budget']})",
        fontsize=10,
    )
    ax_acc.bar(range(len(labels)), [100 * results[k]["clean"] for k in labels], color="tab:gray")
    ax_acc.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    ax_acc.set_ylabel("clean accuracy (%), expected over K draws")
    ax_acc.set_ylim(0, 100)
    ax_acc.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
