"""What every paper recipe shares: flags, the two training runs, evaluation and the report.

A recipe is a ``RecipeSpec`` (network, datasets, DCS placements, the paper's hyperparameters, and its
CPU-scale embedded default) handed to ``run``. ``run`` trains the plain PGD-AT baseline and the
DCS + GSAT network with the same data, seed and schedule, evaluates both, and writes
``OUT/results.json``, ``OUT/results.md`` and ``OUT/curves.png`` (rank 0 only under torchrun). With
``--fig4a`` (the default) it also trains the DCS network with PGD-AT and with clean training and
compares the three (``OUT/fig4a.png``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

import dcspass
from dcspass import bounds
from dcspass.data import FASHION_MNIST_DIR, dataset_info, fashion_mnist_tensors, load_dataset
from dcspass.errors import ConfigError, DCSError
from dcspass.evaluation import get_budget
from dcspass.files import remove_stale_temporaries, write_text_atomic
from dcspass.preflight import output_dir
from dcspass.progress import bar, log, quiet
from dcspass.provenance import provenance
from dcspass.training import TrainConfig, TrainResult, build_network, paper_protocol_accuracy, train
from dcspass.training.checkpoint import check_compatible, load_checkpoint
from dcspass.training.config import PRECISIONS
from dcspass.training.distributed import DistContext, barrier, init_distributed

__all__ = ["Placement", "RecipeSpec", "build_parser", "evaluate_pair", "main", "run"]

# Test images in the clean + PGD-20 table, per --budget.
QUICK_EXAMPLES = {"smoke": 64, "default": 500, "full": 10_000}


@dataclass(frozen=True)
class Placement:
    """Where DCS goes: a policy, the layer it selects (for messages), and whether Eq. 12 is checked."""

    policy: str
    layer: str
    stride: int
    check_bounds: bool = True
    note: str = ""


@dataclass(frozen=True)
class RecipeSpec:
    """One paper recipe.

    ``paper`` holds ``TrainConfig`` fields for the paper-scale run (with ``--data-dir``); ``embedded``
    the overrides for the embedded default (Fashion-MNIST at CPU scale, no ``--data-dir``); ``presets``
    named sets of command-line defaults (``--preset NAME``; flags given on the command line win).
    """

    name: str
    arch: str
    datasets: tuple[str, ...]
    placements: dict[str, Placement]
    paper: dict[str, Any]
    embedded: dict[str, Any]
    notes: tuple[str, ...] = field(default_factory=tuple)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)


def build_parser(spec: RecipeSpec) -> argparse.ArgumentParser:
    """The recipe's command line (the same flags for every recipe)."""
    p = argparse.ArgumentParser(
        prog=f"python -m recipes.{spec.name}",
        description=f"Train {spec.arch} with DCS + GSAT and its plain PGD-AT baseline, evaluate, report. "
        "Without --data-dir: the embedded default (Fashion-MNIST at CPU scale).",
    )
    p.add_argument("--data-dir", type=Path, default=None, help="dataset folder (see docs/training.md)")
    p.add_argument("--dataset", choices=[*spec.datasets, "fashion_mnist"], default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument(
        "--batch-size", type=int, default=None, help="global batch (split over torchrun processes)"
    )
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--width", type=int, default=None, help="the architecture's width knob")
    p.add_argument("--samples-per-epoch", type=int, default=None, help="random subset per epoch")
    p.add_argument("--eval-examples", type=int, default=None, help="held-out examples in the per-epoch log")
    p.add_argument("--placement", choices=sorted(spec.placements), default="downsample")
    p.add_argument("--n", type=int, default=2, help="taps per DCS forward")
    p.add_argument("--k", type=int, default=5, help="DCS kernel size")
    p.add_argument("--out", type=Path, default=Path(f"runs/{spec.name}"))
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true", help="continue from OUT's checkpoints")
    existing.add_argument(
        "--overwrite", action="store_true", help="delete the run already in OUT and train from scratch"
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress bars, stage or epoch lines; only the final summary"
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="wrap the networks with torch.compile",
    )
    p.add_argument("--precision", choices=PRECISIONS, default=None, help="bf16: train under bf16 autocast")
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="network and batches in NHWC",
    )
    p.add_argument(
        "--examples", type=int, default=None, help="test images both evaluations use (default: the budget's)"
    )
    if spec.presets:
        p.add_argument("--preset", choices=sorted(spec.presets), default=None, help="a named set of defaults")
    p.add_argument(
        "--dry-run", action="store_true", help="print the resolved configs and data as JSON; train nothing"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=1, help="train and evaluate seeds SEED .. SEED+N-1")
    p.add_argument("--workers", type=int, default=None, help="data-loader worker processes")
    p.add_argument(
        "--budget", default="default", choices=["smoke", "default", "full"], help="evaluation budget"
    )
    p.add_argument(
        "--quick-eval",
        action="store_true",
        help="only the clean + PGD-20 table, not dcspass.evaluate's protocols",
    )
    p.add_argument(
        "--fig4a",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train the DCS network with PGD-AT and with clean training, and compare the gradient "
        "similarity between draws of all three DCS networks (the paper's Fig. 4a; fig4a.png)",
    )
    return p


def parse_args(spec: RecipeSpec, argv: Sequence[str]) -> argparse.Namespace:
    """The recipe's flags, with ``--preset``'s defaults under the ones given on the command line."""
    parser = build_parser(spec)
    preset = getattr(parser.parse_known_args(argv)[0], "preset", None)
    if preset is not None:
        parser.set_defaults(**spec.presets[preset])
    return parser.parse_args(argv)


def _check_args(args: argparse.Namespace, spec: RecipeSpec) -> None:
    counts = ("epochs", "batch_size", "width", "samples_per_epoch", "eval_examples", "examples", "n", "k")
    for flag in (*counts, "seeds"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.lr is not None and args.lr <= 0:
        raise ConfigError(f"--lr must be > 0, got {args.lr}")
    if args.data_dir is None and args.dataset not in (None, "fashion_mnist"):
        raise ConfigError(
            f"--dataset {args.dataset} needs --data-dir (nothing is downloaded); "
            "without --data-dir the recipe runs its embedded default on Fashion-MNIST"
        )


def _trainings(
    args: argparse.Namespace, base_cfg: TrainConfig, dcs_cfg: TrainConfig
) -> list[tuple[str, TrainConfig, str]]:
    """``(key, config, checkpoint label)`` of every network the recipe trains, in training order."""
    trainings = [("at", base_cfg, "pgd_at"), ("dcs", dcs_cfg, "gsat")]
    if args.fig4a:  # the same DCS network, trained as the paper's Fig. 4a compares it
        trainings += [
            ("dcs_at", replace(dcs_cfg, method="pgd_at"), "dcs_pgd_at"),
            ("dcs_clean", replace(dcs_cfg, method="clean"), "dcs_clean"),
        ]
    return trainings


# Every checkpoint a recipe may write (with or without --fig4a), and the report it writes last.
CHECKPOINT_LABELS = ("pgd_at", "gsat", "dcs_pgd_at", "dcs_clean")
RESULTS = "results.json"


def _check_networks(trainings: list[tuple[str, TrainConfig, str]]) -> None:
    """Build every distinct network once, so Eq. 12 or a bad k fails before the first epoch of any run."""
    seen: set[str] = set()
    for _key, cfg, _label in trainings:
        identity = json.dumps({k: v for k, v in cfg.to_dict().items() if k != "method"}, sort_keys=True)
        if identity not in seen:
            seen.add(identity)
            build_network(cfg)


def _held_run_files(out: Path) -> list[Path]:
    """The checkpoints and ``results.json`` of a single-seed run that ``out`` already holds."""
    held = [out / f"{label}.pt" for label in CHECKPOINT_LABELS] + [out / RESULTS]
    return [path for path in held if path.exists()]


def _check_out(
    args: argparse.Namespace, trainings: list[tuple[str, TrainConfig, str]], is_main: bool = True
) -> None:
    """What ``--out`` already holds: refuse a silent overwrite; under ``--resume``, check each checkpoint
    against the config of the network that will continue it; under ``--overwrite``, remove the old run
    (``is_main`` only). Every rank runs the checks, so a refusal stops all of them, not rank 0 alone."""
    held = _held_run_files(args.out)
    if args.overwrite:
        if not is_main:
            return
        for path in held:
            path.unlink()
        for label in CHECKPOINT_LABELS:
            remove_stale_temporaries(args.out / f"{label}.pt")
        return
    if args.resume:
        for _key, cfg, label in trainings:
            path = args.out / f"{label}.pt"
            if path.exists():
                check_compatible(load_checkpoint(path), cfg, path)
        return
    if held:
        finished = "a finished run" if (args.out / RESULTS).exists() else "a run"
        names = ", ".join(path.name for path in held)
        raise ConfigError(
            f"--out {args.out} already holds {finished} ({names}); pass --resume to continue it, or "
            "--overwrite (or another --out) to start afresh"
        )


def _check_seeds_summary(args: argparse.Namespace) -> None:
    """``--seeds N > 1`` writes ``OUT/results.json`` at the end: refuse, before any training, an ``OUT``
    that already holds a run's results or checkpoints, which that file would overwrite or mix with."""
    held = _held_run_files(args.out)
    if held:
        raise ConfigError(
            f"--out {args.out} already holds a run ({', '.join(path.name for path in held)}) that the "
            f"{args.seeds}-seed summary would overwrite; pass --resume to continue a multi-seed run there, "
            "or --overwrite (or another --out) to start afresh"
        )


def _resume_command(spec: RecipeSpec, argv: Sequence[str]) -> str:
    """The command line that continues this run: the same flags, ``--resume`` instead of ``--overwrite``."""
    flags = [a for a in argv if a != "--overwrite"]
    if "--resume" not in flags:
        flags.append("--resume")
    return shlex.join(["python", "-m", f"recipes.{spec.name}", *flags])


class Interrupted(Exception):
    """Ctrl-C during a recipe; the message says where the last checkpoint is and how to resume."""


def _datasets(args: argparse.Namespace, spec: RecipeSpec) -> tuple[str, Dataset, Dataset]:
    """(name, train set, test set); the embedded default keeps Fashion-MNIST in memory as tensors."""
    if args.data_dir is None:
        return (
            "fashion_mnist",
            TensorDataset(*fashion_mnist_tensors(True)),
            TensorDataset(*fashion_mnist_tensors(False)),
        )
    name = args.dataset or spec.datasets[0]
    return name, load_dataset(name, args.data_dir, train=True), load_dataset(name, args.data_dir, train=False)


def _configs(args: argparse.Namespace, spec: RecipeSpec, dataset: str) -> tuple[TrainConfig, TrainConfig]:
    """(PGD-AT baseline, DCS + GSAT): identical but for the DCS pass and the method."""
    info = dataset_info(dataset)
    fields: dict[str, Any] = {**spec.paper, **(spec.embedded if args.data_dir is None else {})}
    options = dict(fields.pop("model_options", {}))
    if spec.arch == "vit_convstem":
        options.setdefault("image_size", info.image_size)
    overrides = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "width": args.width,
        "samples_per_epoch": args.samples_per_epoch,
        "eval_examples": args.eval_examples,
        "workers": args.workers,
        "precision": args.precision,
        "channels_last": args.channels_last,
    }
    fields.update({k: v for k, v in overrides.items() if v is not None})
    fractions = fields.pop("milestone_fractions", None)
    if fractions is not None:
        # Multi-step milestones scale with the epoch count (the paper's 60/120 of 200 epochs).
        fields["milestones"] = sorted({max(1, round(f * fields["epochs"])) for f in fractions})
    placement = spec.placements[args.placement]
    base = TrainConfig(
        arch=spec.arch,
        num_classes=info.num_classes,
        in_channels=info.in_channels,
        model_options=options,
        dataset=dataset,
        method="pgd_at",
        policy=None,
        n=args.n,
        k=args.k,
        check_bounds=placement.check_bounds,
        seed=args.seed,
        compile=args.compile,
        **fields,
    )
    return base, replace(base, method="gsat", policy=placement.policy)


def _placement_message(spec: RecipeSpec, placement_name: str, n: int, k: int) -> str:
    p = spec.placements[placement_name]
    lo, hi = bounds.interval(p.stride, k)
    admitted = lo <= n <= hi
    msg = (
        f"placement {placement_name}: DCS on {p.layer} (policy {p.policy!r}, stride {p.stride}, "
        f"k={k}, n={n}); "
        f"Eq. 12 interval [{lo:.3g}, {hi:.3g}] {'admits' if admitted else 'REJECTS'} n={n}"
    )
    if not p.check_bounds:
        msg += "; running with check_bounds=False (the paper's placement, as in its main tables)"
    return msg + (f". {p.note}" if p.note else "")


def evaluate_pair(
    baseline: nn.Module,
    dcs: nn.Module,
    test_set: Dataset,
    budget: str,
    out: Path,
    device: torch.device,
    seed: int,
    eps: float,
    alpha: float,
    full: bool = True,
    subjects: dict[str, str] | None = None,
    records: dict[str, dict[str, Any]] | None = None,
    examples: int | None = None,
) -> dict[str, Any]:
    """Evaluate the AT baseline and the DCS + GSAT network on the test set; the recipe's evaluation step.

    Always: clean and PGD-20 accuracy under the paper protocol (attack with frozen taps, prediction on
    fresh draws) on the first ``examples`` (default ``QUICK_EXAMPLES[budget]``) test images, expected
    over the budget's K (``all_correct_k``) draws, the same numbers for both networks; ``examples`` also
    sets the images ``dcspass.evaluate`` uses (default: the budget's). With ``full`` and ``dcspass.evaluate``
    available: its report (paper and adaptive protocols, the DCS network's transfer attack from the
    baseline), saved under ``OUT/eval_{at,dcs}/``, with ``subjects[key]`` (model, checkpoint, dataset) in
    its headings and plot titles and ``records[key]`` (its provenance) in the report's config.
    """
    count = min(examples or QUICK_EXAMPLES[budget], len(test_set))
    loader = DataLoader(Subset(test_set, range(count)), batch_size=128)
    results: dict[str, Any] = {"quick": {}, "evaluate": None}
    draws = get_budget(budget).all_correct_k
    for key, model in (("at", baseline), ("dcs", dcs)):
        torch.manual_seed(seed)
        start = time.perf_counter()
        batches = bar(loader, f"clean + PGD-20, {'PGD-AT baseline' if key == 'at' else 'DCS + GSAT'}")
        clean, robust, total = paper_protocol_accuracy(model, batches, eps, alpha, 20, device, draws)
        results["quick"][key] = {
            "clean_acc": clean / total,
            "pgd20_acc": robust / total,
            "examples": total,
            "draws": draws if any(True for _ in dcspass.dcs_layers(model)) else 1,
            "seconds": time.perf_counter() - start,
        }
    if not full:
        return results
    try:
        from dcspass.evaluation import evaluate
    except ImportError:
        return results
    reports, markdown = {}, {}
    for key, model, source in (("at", baseline, None), ("dcs", dcs, baseline)):
        with warnings.catch_warnings():
            # The baseline has no DCS layer by design; evaluate's warning about that is expected here.
            warnings.filterwarnings("ignore", message=".*has no DCS layer.*")
            report = evaluate(
                model,
                loader,
                protocol="both",
                budget=budget,
                transfer_source=source,
                device=device,
                seed=seed,
                eps=eps,
                examples=count if examples else None,
                subject=(subjects or {}).get(key, ""),
            )
        if records and key in records:
            report.config["provenance"] = records[key]
        report.save(out / f"eval_{key}")
        reports[key] = report.to_dict()
        markdown[key] = report.to_markdown()
    results["evaluate"], results["evaluate_markdown"] = reports, markdown
    results["headline"] = headline(reports["at"], reports["dcs"])
    return results


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


FIG4A_LABELS = {"dcs": "DCS + GSAT", "dcs_at": "DCS + PGD-AT", "dcs_clean": "DCS + clean training"}


def fig4a(
    runs: dict[str, TrainResult],
    test_set: Dataset,
    budget: str,
    out: Path,
    device: torch.device,
    seed: int,
    title: str = "",
) -> dict[str, Any]:
    """The paper's Fig. 4a: gradient cosine similarity between draws and clean accuracy of the same DCS
    network trained three ways, on the same test images; writes ``OUT/fig4a.png``."""
    from dcspass.evaluation import compare_gradient_cosine, plot_cosine_comparison

    count = min(get_budget(budget).cosine_examples, len(test_set))
    x, y = next(iter(DataLoader(Subset(test_set, range(count)), batch_size=count)))
    models = {label: runs[key].net for key, label in FIG4A_LABELS.items()}
    results = compare_gradient_cosine(models, x, y, budget=budget, seed=seed, device=device)
    plot_cosine_comparison(results, out / "fig4a.png", title)
    return results


def _mean_epoch_seconds(result: TrainResult) -> float:
    times = [h["seconds"] for h in result.history]
    return sum(times) / max(len(times), 1)


def _write_markdown(path: Path, payload: dict[str, Any]) -> None:
    quick, runs = payload["evaluation"]["quick"], payload["runs"]
    lines = [
        f"# {payload['recipe']}: DCS + GSAT vs the PGD-AT baseline",
        "",
        f"`{payload['command']}`",
        "",
        f"Dataset {payload['dataset']} ({'embedded default' if payload['embedded'] else 'data dir'}), "
        f"{payload['placement_message']}.",
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


def _plot_curves(path: Path, runs: dict[str, TrainResult]) -> None:
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


def run(spec: RecipeSpec, argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Parse flags, train both networks, evaluate, write the report. Returns the results dict (rank 0).

    With ``--seeds N > 1``: seeds SEED .. SEED+N-1, each a full run in ``OUT/seed_S/``; ``OUT/results.json``
    and ``results.md`` then give every seed's figures and their mean +- std across seeds.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(spec, argv)
    _check_args(args, spec)
    ctx = init_distributed(args.device)
    if args.seeds == 1:
        return _run_seed(spec, args, argv, ctx)
    if not (args.dry_run or args.resume or args.overwrite):
        _check_seeds_summary(args)  # on every rank (it only reads), so all of them stop together
    payloads = []
    for seed in range(args.seed, args.seed + args.seeds):
        seed_args = argparse.Namespace(**{**vars(args), "seed": seed, "out": args.out / f"seed_{seed}"})
        try:
            payloads.append(_run_seed(spec, seed_args, argv, ctx))
        except KeyboardInterrupt:  # before seed's training began (training raises Interrupted)
            done = [f"seed_{s}" for s in range(args.seed, seed)]
            where = f"{', '.join(done)} complete in {args.out}" if done else "no seed finished yet"
            raise Interrupted(
                f"interrupted before seed {seed} began training; {where}; resume with: "
                f"{_resume_command(spec, argv)}"
            ) from None
    if not ctx.is_main:
        return None
    summary = seed_summary(payloads)
    write_text_atomic(args.out / "results.json", json.dumps(summary, indent=2, default=str) + "\n")
    write_text_atomic(args.out / "results.md", seed_markdown(spec, summary))
    print(f"[{spec.name}] wrote {args.out / 'results.json'} and results.md ({args.seeds} seeds)")
    return summary


def _figures(payload: dict[str, Any]) -> dict[str, float]:
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
    per_seed = [_figures(p) for p in payloads]
    seeds = [p["runs"]["dcs"]["config"]["seed"] for p in payloads]
    figures = {}
    for name in per_seed[0]:
        values = torch.tensor([f[name] for f in per_seed], dtype=torch.float64)
        figures[name] = {"values": values.tolist(), "mean": float(values.mean()), "std": float(values.std())}
    return {"recipe": payloads[0]["recipe"], "seeds": seeds, "figures": figures, "runs": payloads}


def seed_markdown(spec: RecipeSpec, summary: dict[str, Any]) -> str:
    seeds = summary["seeds"]
    lines = [
        f"# {spec.name}: {len(seeds)} seeds ({', '.join(map(str, seeds))})",
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


def _run_seed(
    spec: RecipeSpec, args: argparse.Namespace, argv: Sequence[str] | None, ctx: DistContext
) -> dict[str, Any] | None:
    """One seed: train, evaluate, write ``args.out``'s results (rank 0 returns them)."""
    output_dir(args.out)
    dataset, train_set, test_set = _datasets(args, spec)
    base_cfg, dcs_cfg = _configs(args, spec, dataset)
    trainings = _trainings(args, base_cfg, dcs_cfg)
    _check_networks(trainings)
    if args.dry_run:
        return _dry_run(args, dataset, train_set, test_set, trainings) if ctx.is_main else None
    _check_out(args, trainings, ctx.is_main)
    barrier(ctx)
    message = _placement_message(spec, args.placement, args.n, args.k)
    with quiet(args.quiet):
        return _train_evaluate_report(spec, args, argv, ctx, dataset, train_set, test_set, trainings, message)


def _dry_run(
    args: argparse.Namespace,
    dataset: str,
    train_set: Dataset,
    test_set: Dataset,
    trainings: list[tuple[str, TrainConfig, str]],
) -> dict[str, Any]:
    """What a run with these flags would do, printed as JSON: data, every training config, evaluation."""
    plan = {
        "dataset": dataset,
        "data_dir": str(args.data_dir) if args.data_dir is not None else None,
        "train_examples": len(train_set),
        "test_examples": len(test_set),
        "trainings": {label: cfg.to_dict() for _key, cfg, label in trainings},
        "evaluation": {
            "budget": args.budget,
            "examples": min(args.examples or QUICK_EXAMPLES[args.budget], len(test_set)),
            "protocols": "clean + PGD-20" if args.quick_eval else "paper and adaptive",
        },
        "out": str(args.out),
    }
    print(json.dumps(plan, indent=2, default=str))
    return plan


def _train_evaluate_report(
    spec: RecipeSpec,
    args: argparse.Namespace,
    argv: list[str],
    ctx: Any,
    dataset: str,
    train_set: Dataset,
    test_set: Dataset,
    trainings: list[tuple[str, TrainConfig, str]],
    message: str,
) -> dict[str, Any] | None:
    base_cfg = trainings[0][1]

    def say(line: str) -> None:
        log(line, ctx.is_main)

    say(
        f"[{spec.name}] {'embedded default: ' if args.data_dir is None else ''}{dataset}, {spec.arch} width "
        f"{base_cfg.width}, {base_cfg.epochs} epochs, batch {base_cfg.batch_size}, device {ctx.device}"
        f"{f', {ctx.world_size} processes' if ctx.distributed else ''}"
    )
    say(f"[{spec.name}] {message}")
    for note in spec.notes:
        say(f"[{spec.name}] note: {note}")
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for i, (key, cfg, label) in enumerate(trainings):
        try:
            runs[key] = train(
                cfg,
                train_set,
                test_set,
                args.out / f"{label}.pt",
                resume=args.resume,
                device=args.device,
                name=label,
            )
        except KeyboardInterrupt:
            written = [args.out / f"{lab}.pt" for _, _, lab in trainings[: i + 1]]
            written = [path for path in written if path.exists()]
            where = f"last checkpoint {written[-1]}" if written else "no checkpoint written yet"
            raise Interrupted(
                f"interrupted while training {label}; {where}; resume with: {_resume_command(spec, argv)}"
            ) from None
    barrier(ctx)
    if not ctx.is_main:
        return None
    say(f"[{spec.name}] evaluating (budget {args.budget})")
    subjects = {
        key: f"{label}, {spec.arch} width {base_cfg.width}, {args.out / ckpt}, {dataset}"
        for key, label, ckpt in (("at", "PGD-AT baseline", "pgd_at.pt"), ("dcs", "DCS + GSAT", "gsat.pt"))
    }
    try:
        return _evaluate_and_report(
            spec, args, argv, ctx, runs, dataset, test_set, message, base_cfg, say, subjects
        )
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted while evaluating; every checkpoint in {args.out} is complete; evaluate again with: "
            f"{_resume_command(spec, argv)}"
        ) from None


def _evaluate_and_report(
    spec: RecipeSpec,
    args: argparse.Namespace,
    argv: list[str],
    ctx: Any,
    runs: dict[str, TrainResult],
    dataset: str,
    test_set: Dataset,
    message: str,
    base_cfg: TrainConfig,
    say: Callable[[str], None],
    subjects: dict[str, str],
) -> dict[str, Any]:
    command = shlex.join(["python", "-m", f"recipes.{spec.name}", *argv])

    def record(split: str, **checkpoints: Path) -> dict[str, Any]:
        return provenance(
            command=command,
            seed=args.seed,
            device=ctx.device,
            dataset=dataset,
            split=split,
            data_dir=args.data_dir or FASHION_MNIST_DIR,
            checkpoints=checkpoints,
        )

    checkpoints = {key: r.checkpoint for key, r in runs.items() if r.checkpoint is not None}
    evaluation = evaluate_pair(
        runs["at"].net,
        runs["dcs"].net,
        test_set,
        args.budget,
        args.out,
        ctx.device,
        args.seed,
        base_cfg.eps,
        base_cfg.alpha,
        full=not args.quick_eval,
        subjects=subjects,
        examples=args.examples,
        records={
            "at": record("test", model=checkpoints["at"]),
            "dcs": record("test", model=checkpoints["dcs"], transfer=checkpoints["at"]),
        },
    )
    if args.fig4a:
        say(f"[{spec.name}] Fig. 4a: gradient similarity of DCS + GSAT, DCS + PGD-AT, DCS + clean training")
        title = (
            f"Fig. 4a: {spec.arch} width {base_cfg.width}, DCS on {spec.placements[args.placement].layer}, "
            f"trained three ways ({args.out}/gsat.pt, dcs_pgd_at.pt, dcs_clean.pt), {dataset}"
        )
        evaluation["fig4a"] = fig4a(runs, test_set, args.budget, args.out, ctx.device, args.seed, title)
    at_s, dcs_s = _mean_epoch_seconds(runs["at"]), _mean_epoch_seconds(runs["dcs"])
    payload = {
        "recipe": spec.name,
        "command": command,
        "provenance": record("train (training), test (evaluation)", **checkpoints),
        "dataset": dataset,
        "embedded": args.data_dir is None,
        "placement": args.placement,
        "placement_message": message,
        "device": str(ctx.device),
        "world_size": ctx.world_size,
        "runs": {
            key: {
                "config": r.config.to_dict(),
                "history": r.history,
                "epochs_done": r.epochs_done,
                "seconds_per_epoch": _mean_epoch_seconds(r),
            }
            for key, r in runs.items()
        },
        "time_ratio": dcs_s / at_s if at_s > 0 else float("nan"),
        "evaluation": evaluation,
        "notes": list(spec.notes),
    }
    write_text_atomic(args.out / "results.json", json.dumps(payload, indent=2, default=str) + "\n")
    _write_markdown(args.out / "results.md", payload)
    _plot_curves(args.out / "curves.png", runs)
    at, dcs = evaluation["quick"]["at"], evaluation["quick"]["dcs"]
    print(
        f"[{spec.name}] PGD-AT: clean {100 * at['clean_acc']:.2f}% PGD-20 {100 * at['pgd20_acc']:.2f}% | "
        f"DCS+GSAT: clean {100 * dcs['clean_acc']:.2f}% PGD-20 {100 * dcs['pgd20_acc']:.2f}% "
        f"(paper-protocol attack; {dcs['examples']} test images, expected accuracy over {dcs['draws']} "
        "draws of taps)"
    )
    say(f"[{spec.name}] wrote {args.out / 'results.json'}, results.md, curves.png")
    return payload


def main(spec: RecipeSpec, argv: Sequence[str] | None = None) -> int:
    """Command-line entry: run, turning dcspass errors into one clear line and exit status 2, and Ctrl-C
    into one line that says how to resume (exit status 130)."""
    try:
        run(spec, argv)
    except DCSError as exc:
        print(f"{spec.name}: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"{spec.name}: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{spec.name}: interrupted before training started; nothing was written", file=sys.stderr)
        return 130
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0
