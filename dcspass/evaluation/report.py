"""``Report``: the evaluation's results, as JSON, a markdown table and PNG plots (matplotlib, Agg).

Every accuracy is printed with the budget it was measured under, the number of images, repeats and
scoring draws, so a CPU-scale number is never read as a reference one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..files import write_text_atomic
from .protocols import ProtocolResult
from .sanity import SanityCheck
from .scoring import Accuracy

__all__ = ["Report"]


@dataclass
class Report:
    """Results of ``dcspass.evaluate``.

    Attributes:
        config: eps, seed, budget (all its settings), model facts (DCS layers, tap space), versions.
        paper, adaptive: per-protocol results (None when that protocol was not run).
        sanity: the sanity-check verdicts.
        analyses: ``{"cosine": ..., "sweeps": ...}`` (see ``dcspass.evaluation.analyses``).
        warnings: what the user should know (deterministic model, fallbacks, skipped attacks).
        seconds: wall time per part.
    """

    config: dict
    paper: ProtocolResult | None = None
    adaptive: ProtocolResult | None = None
    sanity: list[SanityCheck] = field(default_factory=list)
    analyses: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def budget(self) -> str:
        return self.config["budget"]["name"]

    def accuracy(self, protocol: str, attack: str) -> float:
        """Mean accuracy of one row, e.g. ``report.accuracy("adaptive", "worst case")``."""
        result = {"paper": self.paper, "adaptive": self.adaptive}[protocol]
        if result is None:
            raise KeyError(f"the {protocol} protocol was not run")
        return result.accuracies[attack].mean

    def to_dict(self) -> dict:
        return {
            "format": "dcspass-evaluation-v1",
            "config": self.config,
            "paper": self.paper.to_dict() if self.paper else None,
            "adaptive": self.adaptive.to_dict() if self.adaptive else None,
            "sanity": [c.to_dict() for c in self.sanity],
            "analyses": self.analyses,
            "warnings": self.warnings,
            "seconds": self.seconds,
        }

    def to_markdown(self, plots: dict[str, str] | None = None) -> str:
        """The report as markdown: both protocols side by side, sanity checks, analyses, plot links."""
        c = self.config
        lines = [
            f"# dcspass evaluation report: {c.get('subject', c['model'])}",
            "",
            f"- model: {c['model']}",
            f"- threat model: L_inf eps = {c['eps'] * 255:.2f}/255 on [0, 1] inputs; "
            f"{c['examples']} test images",
            f"- **{c['budget_line']}**",
            f"- scoring: {c['scoring']}; accuracies are means over images, with 95 % intervals over images",
            f"- seed {c['seed']}; device {c['device']}; draw runner: {c['runner']}",
            "",
        ]
        for w in self.warnings:
            lines.append(f"> warning: {w}")
        if self.warnings:
            lines.append("")
        lines += self._table()
        lines += ["", "## Sanity checks", "", "| check | verdict | numbers |", "|---|---|---|"]
        for check in self.sanity:
            lines.append(f"| {check.name} | {check.verdict} | {check.detail} |")
        cosine = self.analyses.get("cosine")
        if cosine:
            lines += ["", "## Gradient cosine similarity between two draws (Fig. 4)", ""]
            lines += ["| taps of the second draw | mean | std | gradients |", "|---|---|---|---|"]
            names = {
                "overall": "independent draw",
                "s": "X^s: same taps",
                "g": "X^g: stride-aligned with the first draw's",
                "u": "X^u: reading pixels the first draw never reads",
            }
            for key, label in names.items():
                s = cosine.get(key, {})
                mean = "n/a" if s.get("mean") is None else f"{s['mean']:.3f}"
                std = "n/a" if s.get("std") is None else f"{s['std']:.3f}"
                lines.append(f"| {label} | {mean} | {std} | {s.get('count', 0)} |")
            lines.append(f"\nlayer split: `{cosine.get('layer')}` (budget {self.budget})")
        sweeps = self.analyses.get("sweeps")
        if sweeps:
            lines += ["", "## Accuracy vs attack strength (Fig. 3)", ""]
            for key, curve in sweeps.items():
                paper = [round(a, 3) for a in curve["paper"]]
                adaptive = [round(a, 3) for a in curve["adaptive"]]
                widest = max(hi - lo for lo, hi in curve["paper_interval"] + curve["adaptive_interval"])
                lines.append(
                    f"- {key} {curve['values']}: paper {paper}, adaptive {adaptive} "
                    f"({curve['fixed']}; {curve['examples']} images, budget {self.budget}; "
                    f"95 % intervals up to {widest:.2f} wide, see report.json)"
                )
        if plots:
            lines += ["", "## Plots", ""]
            for title, path in plots.items():
                lines.append(f"![{title}]({path})")
        if self.seconds:
            lines += ["", "## Time", "", ", ".join(f"{k}: {v:.1f} s" for k, v in self.seconds.items())]
        return "\n".join(lines) + "\n"

    def _table(self) -> list[str]:
        lines = []
        for result in (self.paper, self.adaptive):
            if result is None:
                continue
            lines += [f"## {result.label}", ""]
            if result is self.paper:
                lines += [
                    _row(
                        "attack",
                        "accuracy [95 % interval]",
                        "std over repeats",
                        "repeats",
                        "images",
                        "setting",
                    ),
                    "|---|---|---|---|---|---|",
                ]
                for name, acc in result.accuracies.items():
                    lines.append(
                        _row(
                            name,
                            _percent(acc),
                            f"{100 * acc.std:.2f}",
                            acc.repeats,
                            acc.examples,
                            result.descriptions.get(name, ""),
                        )
                    )
            else:
                k = self.config["budget"]["all_correct_k"]
                lines += [
                    _row(
                        "attack", "expected accuracy [95 % interval]", f"all-{k}-correct", "images", "setting"
                    ),
                    "|---|---|---|---|---|",
                ]
                for name, acc in result.accuracies.items():
                    all_k = "n/a" if acc.all_correct is None else f"{100 * acc.all_correct:.2f} %"
                    lines.append(
                        _row(name, _percent(acc), all_k, acc.examples, result.descriptions.get(name, ""))
                    )
            for note in result.notes:
                lines.append(f"\nnote: {note}")
            lines.append("")
        return lines

    def save(self, out_dir: str | Path) -> Path:
        """Write ``report.json``, ``report.md`` (each atomically) and the PNGs into ``out_dir`` (created);
        returns it."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        plots = self.plot(out)
        write_text_atomic(out / "report.json", json.dumps(self.to_dict(), indent=2, default=float))
        write_text_atomic(out / "report.md", self.to_markdown({k: Path(v).name for k, v in plots.items()}))
        return out

    def plot(self, out_dir: str | Path) -> dict[str, str]:
        """Draw the PNGs (accuracy vs steps / eps / EOT samples; gradient cosine); returns title -> path."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = Path(out_dir)
        written: dict[str, str] = {}
        sweeps = self.analyses.get("sweeps")
        subject = self.config.get("subject", self.config["model"])
        if sweeps:
            from matplotlib.ticker import MaxNLocator

            axes_labels = {"steps": "PGD steps", "eps": "eps (x/255)", "eot": "EOT samples per step"}
            fig, axes = plt.subplots(1, len(sweeps), figsize=(4.5 * len(sweeps), 3.8), squeeze=False)
            for ax, (key, curve) in zip(axes[0], sweeps.items(), strict=True):
                for protocol, marker in (("paper", "o-"), ("adaptive", "s-")):
                    values = curve["values"]
                    ax.plot(values, [100 * a for a in curve[protocol]], marker, label=f"{protocol} protocol")
                    band = curve.get(f"{protocol}_interval")
                    if band:
                        ax.fill_between(
                            values, [100 * lo for lo, _ in band], [100 * hi for _, hi in band], alpha=0.2
                        )
                ax.set_xlabel(axes_labels.get(key, key))
                if key in ("steps", "eot"):
                    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_ylabel("robust accuracy (%), 95 % interval")
                ax.set_ylim(0, 100)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=8)
            fig.suptitle(
                f"Accuracy vs attack strength: {subject}\n(budget {self.budget}, "
                f"{next(iter(sweeps.values()))['examples']} images)",
                fontsize=10,
            )
            fig.tight_layout()
            path = out / "sweeps.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written["accuracy vs attack strength"] = str(path)
        cosine = self.analyses.get("cosine")
        if cosine and cosine.get("overall", {}).get("mean") is not None:
            keys = [k for k in ("overall", "s", "g", "u") if cosine.get(k, {}).get("mean") is not None]
            labels = {"overall": "independent\ndraw", "s": "X^s\n(same taps)", "g": "X^g", "u": "X^u"}
            fig, ax = plt.subplots(figsize=(5, 3.6))
            ax.bar([labels[k] for k in keys], [cosine[k]["mean"] for k in keys])
            for i, k in enumerate(keys):  # quantiles, not +- std: the spread stays inside [-1, 1]
                q = cosine[k].get("quantiles")
                if q:
                    ax.vlines(i, q["q05"], q["q95"], color="black", linewidth=0.8)
                    ax.vlines(i, q["q25"], q["q75"], color="black", linewidth=3)
            ax.set_ylabel("cosine similarity of input gradients")
            lows = [cosine[k]["quantiles"]["q05"] for k in keys if cosine[k].get("quantiles")]
            ax.set_ylim(max(-1.0, min([0.0, *lows]) - 0.05), 1.0)
            ax.set_title(
                f"Gradient similarity between two draws: {subject}\n(mean; 25-75 % and 5-95 % quantiles; "
                f"budget {self.budget})",
                fontsize=9,
            )
            ax.grid(axis="y", alpha=0.3)
            fig.tight_layout()
            path = out / "cosine.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written["gradient cosine similarity"] = str(path)
        return written


def _percent(acc: Accuracy) -> str:
    """``"69.53 % [63.10, 75.20]"``: a mean accuracy and its 95 % interval, in percent."""
    return f"{100 * acc.mean:.2f} % [{100 * acc.low:.2f}, {100 * acc.high:.2f}]"


def _row(*cells: object) -> str:
    """One markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"
