"""A recipe's report: the headline table, results.md, the training curves and the seed summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dcspass.files import write_text_atomic
from dcspass.training import TrainResult

__all__ = [
    "FIG4A_LABELS",
    "HEADLINE_ROWS",
    "headline",
    "headline_markdown",
    "mean_epoch_seconds",
    "plot_curves",
    "seed_markdown",
    "seed_summary",
    "write_markdown",
]

# Rows of the headline table: (protocol, row) of both reports, in the order printed.
HEADLINE_ROWS = (("adaptive", "clean"), ("paper", "PGD-{steps}"), ("adaptive", "worst case"))


def headline(at: dict[str, Any], dcs: dict[str, Any]) -> dict[str, Any]:
    """Clean, paper-protocol PGD and the adaptive worst case of both networks (from their
    ``Report.to_dict()``), and DCS + GSAT minus the baseline on each, paired over the same images."""
    from dcspass.evaluation.stats import paired_difference

    steps = dcs["config"]["budget"]["pgd_steps"]
    rows = {}
    for protocol, row in HEADLINE_ROWS:
        name = row.format(steps=steps)
        a, d = at[protocol]["accuracies"][name], dcs[protocol]["accuracies"][name]
        diff = paired_difference(d["per_example"], a["per_example"])
        rows[f"{protocol}: {name}"] = {"at": _brief(a), "dcs": _brief(d), "difference": diff.to_dict()}
    return {"rows": rows, "examples": dcs["config"]["examples"], "budget": dcs["config"]["budget"]["name"]}


def _brief(acc: dict[str, Any]) -> dict[str, Any]:
    return {k: acc[k] for k in ("mean", "low", "high", "all_correct", "scoring")}


def headline_markdown(summary: dict[str, Any]) -> list[str]:
    """The headline table: both networks with 95 % intervals, and their paired difference."""
    lines = [
        "| row | PGD-AT baseline | DCS + GSAT | DCS + GSAT - baseline (paired, 95 %) | significant? |",
        "|---|---|---|---|---|",
    ]
    for name, r in summary["rows"].items():
        cells = [
            f"{100 * r[k]['mean']:.2f} [{100 * r[k]['low']:.2f}, {100 * r[k]['high']:.2f}]"
            for k in ("at", "dcs")
        ]
        d = r["difference"]
        verdict = "yes" if d["significant"] else "no"
        lines.append(
            f"| {name} | {cells[0]} | {cells[1]} | {100 * d['mean']:+.2f} [{100 * d['low']:+.2f}, "
            f"{100 * d['high']:+.2f}] (p = {d['p_value']:.3g}) | {verdict}, at {d['examples']} images |"
        )
    return lines


FIG4A_LABELS = {
    "dcs": "DCS + GSAT",
    "dcs_frozen": "DCS + PGD-AT on GSAT's frozen draw, no exclusion",
    "dcs_clean": "DCS + clean training",
}


def mean_epoch_seconds(result: TrainResult) -> float:
    times = [h["seconds"] for h in result.history]
    return sum(times) / max(len(times), 1)


def write_markdown(path: Path, payload: dict[str, Any]) -> None:
    quick, runs = payload["evaluation"]["quick"], payload["runs"]
    lines = [
        f"# {payload['recipe']}: DCS + GSAT vs the PGD-AT baseline",
        "",
        f"`{payload['command']}`",
        "",
        f"Dataset {payload['dataset']}, {payload['placement_message']}.",
        "",
        f"**Scale: {payload['scale_note']}**",
        "",
        "Clean and PGD-20 accuracy: paper protocol (attack and prediction use different taps), "
        f"first {quick['at']['examples']} test images, expected accuracy over {quick['dcs']['draws']} "
        "fresh draws of taps per chunk of images (the baseline has no taps: one forward).",
        "",
        "| model | clean acc | PGD-20 acc | train s/epoch | epochs |",
        "|---|---|---|---|---|",
    ]
    for key, label in (("at", "PGD-AT baseline"), ("dcs", "DCS + GSAT")):
        lines.append(
            f"| {label} | {100 * quick[key]['clean_acc']:.2f} | {100 * quick[key]['pgd20_acc']:.2f} | "
            f"{runs[key]['seconds_per_epoch']:.1f} | {runs[key]['epochs_done']} |"
        )
    lines += ["", f"Training time ratio (GSAT / PGD-AT, per epoch): {payload['time_ratio']:.2f}x", ""]
    fig4a_results = payload["evaluation"].get("fig4a")
    if fig4a_results:
        from dcspass.evaluation.comparison import cosine_comparison_markdown

        lines += [
            "## Gradient similarity between two draws, by training method (Fig. 4a)",
            "",
            "Cosine similarity of the input gradient under two draws of taps (mean +- std over images x "
            "draw pairs), "
            "overall and split by tap overlap at the first DCS layer, and clean accuracy; `fig4a.png`.",
            "",
            *cosine_comparison_markdown(fig4a_results),
            "",
        ]
    evaluated = payload["evaluation"].get("evaluate")
    if evaluated:
        summary = payload["evaluation"]["headline"]
        lines += [
            "## Headline: dcspass.evaluate, both networks on the same images",
            "",
            f"Budget {summary['budget']}, the first {summary['examples']} test images. Accuracy in % "
            "with its 95 % interval over images; the difference is paired over the same images. "
            "The table above differs: it is the training log's measure (fresh draws per chunk of 16 images, "
            f"first {quick['at']['examples']} images).",
            "",
            *headline_markdown(summary),
            "",
        ]
        lines += ["## dcspass.evaluate (both protocols)", ""]
        for key, label in (("at", "PGD-AT baseline"), ("dcs", "DCS + GSAT")):
            body = payload["evaluation"]["evaluate_markdown"][key]
            lines += [f"### {label} (full report in `eval_{key}/`)", "", body, ""]
    write_text_atomic(path, "\n".join(lines) + "\n")


def plot_curves(path: Path, runs: dict[str, TrainResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for key, label in (("at", "PGD-AT"), ("dcs", "DCS + GSAT")):
        hist = runs[key].history
        epochs = [h["epoch"] for h in hist]
        for ax, metric, title in zip(
            axes,
            ("loss", "clean_acc", "pgd_acc"),
            ("training loss", "clean acc (held out)", "PGD-20 acc (held out)"),
            strict=True,
        ):
            ax.plot(epochs, [h[metric] for h in hist], marker="o", label=label)
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def seed_figures(payload: dict[str, Any]) -> dict[str, float]:
    """The per-seed figures averaged across seeds: the quick table and the headline rows (percent)."""
    evaluation = payload["evaluation"]
    out = {}
    for key, label in (("at", "PGD-AT"), ("dcs", "DCS + GSAT")):
        quick = evaluation["quick"][key]
        out[f"{label}: clean (quick table)"] = 100 * quick["clean_acc"]
        out[f"{label}: PGD-20 (quick table)"] = 100 * quick["pgd20_acc"]
    for row, r in (evaluation.get("headline") or {}).get("rows", {}).items():
        out[f"PGD-AT: {row}"] = 100 * r["at"]["mean"]
        out[f"DCS + GSAT: {row}"] = 100 * r["dcs"]["mean"]
        out[f"DCS + GSAT - PGD-AT: {row}"] = 100 * r["difference"]["mean"]
    return out


def seed_summary(payloads: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std (n - 1) across seeds of every per-seed figure, beside the per-seed values."""
    per_seed = [seed_figures(p) for p in payloads]
    seeds = [p["runs"]["dcs"]["config"]["seed"] for p in payloads]
    figures = {}
    for name in per_seed[0]:
        values = torch.tensor([f[name] for f in per_seed], dtype=torch.float64)
        figures[name] = {"values": values.tolist(), "mean": float(values.mean()), "std": float(values.std())}
    return {"recipe": payloads[0]["recipe"], "seeds": seeds, "figures": figures, "runs": payloads}


def seed_markdown(name: str, summary: dict[str, Any]) -> str:
    seeds = summary["seeds"]
    lines = [
        f"# {name}: {len(seeds)} seeds ({', '.join(map(str, seeds))})",
        "",
        "Mean +- std across seeds (in %); each seed's full tables are in `seed_S/results.md`.",
        "",
        "| figure | mean +- std | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|---|" + "---|" * len(seeds),
    ]
    for name, f in summary["figures"].items():
        values = " | ".join(f"{v:.2f}" for v in f["values"])
        lines.append(f"| {name} | {f['mean']:.2f} +- {f['std']:.2f} | {values} |")
    return "\n".join(lines) + "\n"
