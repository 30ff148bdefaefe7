"""What every paper recipe runs: the trainings, the evaluation and the report, resumable.

``run`` trains the plain PGD-AT baseline and the DCS + GSAT network with the same data, seed and
schedule, evaluates both, and writes ``OUT/results.json``, ``OUT/results.md`` and ``OUT/curves.png``
(rank 0 only under torchrun). With ``--fig4a`` (the default) it also trains the DCS network with GSAT's
attack but no exclusion, and with clean training, and compares the three (``OUT/fig4a.png``). The
flags and configs live in ``recipes.spec``, the report's tables in ``recipes.report``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import dcspass
from dcspass.data import FASHION_MNIST_DIR, default_data_dir
from dcspass.errors import DCSError
from dcspass.evaluation import get_budget
from dcspass.files import write_text_atomic
from dcspass.preflight import output_dir
from dcspass.progress import bar, log, quiet
from dcspass.provenance import provenance
from dcspass.training import TrainConfig, TrainResult, paper_protocol_accuracy, train
from dcspass.training.distributed import DistContext, barrier, init_distributed

from .report import (
    FIG4A_LABELS,
    headline,
    mean_epoch_seconds,
    plot_curves,
    seed_markdown,
    seed_summary,
    write_markdown,
)
from .spec import (
    QUICK_EXAMPLES,
    Placement,
    RecipeSpec,
    check_args,
    check_networks,
    check_out,
    check_seeds_summary,
    load_data,
    make_configs,
    parse_args,
    placement_message,
    plan_trainings,
    resume_command,
)

__all__ = [
    "Interrupted",
    "Placement",
    "RecipeSpec",
    "evaluate_both_protocols",
    "evaluate_pair",
    "fig4a",
    "main",
    "run",
]


class Interrupted(Exception):
    """Ctrl-C during a recipe; the message says where the last checkpoint is and how to resume."""


def evaluate_both_protocols(
    model: nn.Module, loader: Any, *, transfer_source: nn.Module | None, **options: Any
) -> Any:
    """``dcspass.evaluate`` under both protocols (``options``: its keywords), without its warning that a
    network has no DCS layer: the PGD-AT baseline has none by design."""
    from dcspass.evaluation import evaluate

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*has no DCS layer.*")
        return evaluate(model, loader, protocol="both", transfer_source=transfer_source, **options)


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
        importlib.import_module("dcspass.evaluation")
    except ImportError:
        return results
    reports, markdown = {}, {}
    for key, model, source in (("at", baseline, None), ("dcs", dcs, baseline)):
        report = evaluate_both_protocols(
            model,
            loader,
            transfer_source=source,
            budget=budget,
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


def run(spec: RecipeSpec, argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Parse flags, train both networks, evaluate, write the report. Returns the results dict (rank 0).

    With ``--seeds N > 1``: seeds SEED .. SEED+N-1, each a full run in ``OUT/seed_S/``; ``OUT/results.json``
    and ``results.md`` then give every seed's figures and their mean +- std across seeds.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(spec, argv)
    check_args(args, spec)
    ctx = init_distributed(args.device)
    if args.seeds == 1:
        return _run_seed(spec, args, argv, ctx)
    if not (args.dry_run or args.resume or args.overwrite):
        check_seeds_summary(args)  # on every rank (it only reads), so all of them stop together
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
                f"{resume_command(spec, argv)}"
            ) from None
    if not ctx.is_main:
        return None
    summary = seed_summary(payloads)
    write_text_atomic(args.out / "results.json", json.dumps(summary, indent=2, default=str) + "\n")
    write_text_atomic(args.out / "results.md", seed_markdown(spec.name, summary))
    print(f"[{spec.name}] wrote {args.out / 'results.json'} and results.md ({args.seeds} seeds)")
    return summary


def _run_seed(
    spec: RecipeSpec, args: argparse.Namespace, argv: Sequence[str] | None, ctx: DistContext
) -> dict[str, Any] | None:
    """One seed: train, evaluate, write ``args.out``'s results (rank 0 returns them)."""
    output_dir(args.out)
    dataset, train_set, test_set = load_data(args, spec)
    base_cfg, dcs_cfg = make_configs(args, spec, dataset)
    trainings = plan_trainings(args, base_cfg, dcs_cfg)
    check_networks(trainings)
    if args.dry_run:
        return _dry_run(args, dataset, train_set, test_set, trainings) if ctx.is_main else None
    check_out(args, trainings, ctx.is_main)
    barrier(ctx)
    message = placement_message(spec, args.placement, args.n, args.k)
    with quiet(args.quiet):
        return _train_evaluate_report(spec, args, argv, ctx, dataset, train_set, test_set, trainings, message)


def data_source(args: argparse.Namespace, dataset: str, train_set: Dataset) -> str:
    """The folder the data came from, as reports and provenance name it."""
    source = getattr(train_set, "source", None)
    if source:
        return str(source)
    if args.data_dir is not None:
        return str(args.data_dir)
    return str(FASHION_MNIST_DIR if dataset == "fashion_mnist" else default_data_dir())


def scale_note(args: argparse.Namespace, spec: RecipeSpec, cfg: TrainConfig, train_images: int) -> str:
    """What scale a run is, in one sentence a report prints above its tables."""
    width = "the paper's width" if cfg.width is None else f"width {cfg.width}"
    seen = cfg.samples_per_epoch or train_images
    what = (
        f"{spec.arch} at {width}, {cfg.epochs} epochs of {min(seen, train_images):,} of the "
        f"{train_images:,} training images, PGD-{cfg.attack_steps} training attack"
    )
    if args.scale == "cpu":
        return (
            f"CPU scale ({what}): a small run on the paper's setup, not the paper's Table 1, which "
            "trains the full-width network for 200 epochs (`--scale paper`, a GPU job)"
        )
    return f"paper scale ({what})"


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
        "scale": args.scale,
        "data_dir": data_source(args, dataset, train_set),
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
        f"[{spec.name}] {args.scale} scale: {dataset}, {spec.arch} width "
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
                f"interrupted while training {label}; {where}; resume with: {resume_command(spec, argv)}"
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
            spec, args, argv, ctx, runs, dataset, train_set, test_set, message, base_cfg, say, subjects
        )
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted while evaluating; every checkpoint in {args.out} is complete; evaluate again with: "
            f"{resume_command(spec, argv)}"
        ) from None


def _evaluate_and_report(
    spec: RecipeSpec,
    args: argparse.Namespace,
    argv: list[str],
    ctx: Any,
    runs: dict[str, TrainResult],
    dataset: str,
    train_set: Dataset,
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
            data_dir=data_source(args, dataset, train_set),
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
            f"trained three ways ({args.out}/gsat.pt, dcs_frozen_pgd_at.pt, dcs_clean.pt), {dataset}"
        )
        evaluation["fig4a"] = fig4a(runs, test_set, args.budget, args.out, ctx.device, args.seed, title)
    at_s, dcs_s = mean_epoch_seconds(runs["at"]), mean_epoch_seconds(runs["dcs"])
    payload = {
        "recipe": spec.name,
        "command": command,
        "provenance": record("train (training), test (evaluation)", **checkpoints),
        "dataset": dataset,
        "scale": args.scale,
        "scale_note": scale_note(args, spec, base_cfg, len(train_set)),
        "placement": args.placement,
        "placement_message": message,
        "device": str(ctx.device),
        "world_size": ctx.world_size,
        "runs": {
            key: {
                "config": r.config.to_dict(),
                "history": r.history,
                "epochs_done": r.epochs_done,
                "seconds_per_epoch": mean_epoch_seconds(r),
            }
            for key, r in runs.items()
        },
        "time_ratio": dcs_s / at_s if at_s > 0 else float("nan"),
        "evaluation": evaluation,
        "notes": list(spec.notes),
    }
    write_text_atomic(args.out / "results.json", json.dumps(payload, indent=2, default=str) + "\n")
    write_markdown(args.out / "results.md", payload)
    plot_curves(args.out / "curves.png", runs)
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
