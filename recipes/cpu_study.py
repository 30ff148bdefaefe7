"""Does DCS + GSAT beat PGD-AT on CIFAR-10? The trend over training, as far as one CPU machine goes.

``python -m recipes.cpu_study`` trains three ResNet-18 arms on CIFAR-10 under one schedule and seed:

- ``pgd_at``: the plain network, PGD-7 adversarial training;
- ``gsat_downsample``: DCS on ``layer2.0.conv1`` (stride 2, inside Eq. 12's interval), GSAT;
- ``gsat_paper``: DCS on ``layer1.0.conv1`` (stride 1, the paper's main placement, outside Eq. 12's
  interval; ``check_bounds=False`` as the paper runs it), GSAT.

At each evaluation point (by default 25 %, 50 % and 100 % of the epochs) it keeps a copy of every
arm's checkpoint and evaluates it with ``dcspass.evaluate`` under both protocols (the DCS arms with the
PGD-AT arm of the same point as their transfer source), on the first ``--examples-point`` test images
(``--examples`` at the last point). The report gives every accuracy with its 95 % interval, the paired
DCS - PGD-AT difference at every point, and ``trend.png``.

Every step is resumable: training continues from the arm's checkpoint, and an evaluation whose report
is on disk is not run again. Rerun the same command (``--resume``) after an interrupt.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Subset

from dcspass.data import dataset_info, default_workers, load_dataset
from dcspass.errors import ConfigError, DCSError
from dcspass.files import write_text_atomic
from dcspass.preflight import output_dir
from dcspass.progress import log, quiet
from dcspass.provenance import file_record, provenance
from dcspass.training import TrainConfig, train
from dcspass.training.checkpoint import load_checkpoint, load_model

from .common import evaluate_both_protocols
from .report import headline

__all__ = ["ARMS", "Arm", "main", "run"]


@dataclass(frozen=True)
class Arm:
    """One trained network of the study: its label, DCS policy (None: plain) and method."""

    key: str
    label: str
    policy: str | None
    method: str
    check_bounds: bool = True


ARMS = (
    Arm("pgd_at", "PGD-AT", None, "pgd_at"),
    Arm("gsat_downsample", "DCS + GSAT, downsample (layer2.0.conv1)", "index:6", "gsat"),
    Arm("gsat_paper", "DCS + GSAT, paper placement (layer1.0.conv1)", "index:2", "gsat", check_bounds=False),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m recipes.cpu_study",
        description="Train PGD-AT and two DCS + GSAT placements of ResNet-18 on CIFAR-10, evaluate each at "
        "several points of training under both protocols, and report the trend.",
    )
    p.add_argument("--data-dir", type=Path, default=None, help="CIFAR-10 folder (default: ./data)")
    p.add_argument("--width", type=int, default=8, help="ResNet-18 width (the paper's is 64)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--samples-per-epoch", type=int, default=None, help="default: all 50,000 images")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument(
        "--points",
        default="0.25,0.5,1",
        help="evaluation points, as fractions of the epochs (default: %(default)s)",
    )
    p.add_argument("--examples", type=int, default=500, help="test images at the last point")
    p.add_argument("--examples-point", type=int, default=200, help="test images at the earlier points")
    p.add_argument("--budget", default="default", choices=("smoke", "default", "full"))
    p.add_argument("--arms", default=",".join(a.key for a in ARMS), help="comma-separated subset of arms")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-examples", type=int, default=256, help="held-out images in the per-epoch log")
    p.add_argument("--out", type=Path, default=Path("runs/cpu_study"))
    p.add_argument("--resume", action="store_true", help="continue the study in --out")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--device", default=None)
    return p


def _points(text: str, epochs: int) -> list[int]:
    try:
        fractions = [float(f) for f in text.split(",")]
    except ValueError:
        raise ConfigError(f"--points {text!r}: give comma-separated fractions such as 0.25,0.5,1") from None
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ConfigError(f"--points {text!r}: every fraction must lie in (0, 1]")
    return sorted({max(1, round(f * epochs)) for f in fractions} | {epochs})


def _arms(text: str) -> list[Arm]:
    by_key = {a.key: a for a in ARMS}
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in by_key]
    if unknown or "pgd_at" not in keys:
        raise ConfigError(f"--arms {text!r}: choose from {sorted(by_key)}, pgd_at included (the baseline)")
    return [by_key[k] for k in keys]


def _config(args: argparse.Namespace, arm: Arm) -> TrainConfig:
    info = dataset_info("cifar10")
    return TrainConfig(
        arch="resnet18",
        num_classes=info.num_classes,
        in_channels=info.in_channels,
        width=args.width,
        dataset="cifar10",
        method=arm.method,
        policy=arm.policy,
        check_bounds=arm.check_bounds,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        milestones=[max(1, round(0.75 * args.epochs))],
        samples_per_epoch=args.samples_per_epoch,
        eval_examples=args.eval_examples,
        seed=args.seed,
        workers=default_workers(),
    )


def _check_out(args: argparse.Namespace) -> None:
    state = args.out / "study.json"
    if state.exists() and not args.resume:
        raise ConfigError(
            f"--out {args.out} already holds a study; pass --resume to continue it, or another --out"
        )
    if state.exists():
        saved = json.loads(state.read_text())["settings"]
        mine = _settings(args)
        changed = {k: (saved.get(k), v) for k, v in mine.items() if saved.get(k) != v}
        if changed:
            detail = ", ".join(f"{k}: {a!r} in {args.out} vs {b!r} now" for k, (a, b) in changed.items())
            raise ConfigError(f"--resume with other settings than the study in {args.out} ({detail})")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = (
        "width",
        "epochs",
        "samples_per_epoch",
        "batch_size",
        "lr",
        "points",
        "examples",
        "examples_point",
    )
    return {k: getattr(args, k) for k in (*keys, "budget", "arms", "seed")}


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train, evaluate at every point, write ``OUT/results.{json,md}`` and ``OUT/trend.png``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    for flag in ("width", "epochs", "batch_size", "examples", "examples_point", "eval_examples"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    points, arms = _points(args.points, args.epochs), _arms(args.arms)
    output_dir(args.out)
    _check_out(args)
    train_set = load_dataset("cifar10", args.data_dir, train=True)
    test_set = load_dataset("cifar10", args.data_dir, train=False)
    command = shlex.join(["python", "-m", "recipes.cpu_study", *argv])
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        args.out / "study.json",
        json.dumps({"command": command, "settings": _settings(args)}, indent=2) + "\n",
    )
    wall = time.perf_counter()
    evaluations: dict[int, dict[str, Any]] = {}
    with quiet(args.quiet):
        for point in points:
            checkpoints = {}
            for arm in arms:
                live = args.out / f"{arm.key}.pt"
                kept = args.out / f"{arm.key}_epoch{point}.pt"
                if not kept.exists():
                    train(
                        _config(args, arm),
                        train_set,
                        test_set,
                        live,
                        resume=True,
                        device=args.device,
                        stop_after_epoch=point,
                        name=arm.key,
                    )
                    if int(load_checkpoint(live)["epoch"]) != point:
                        raise DCSError(f"{live} did not reach epoch {point}")
                    shutil.copyfile(live, kept)
                checkpoints[arm.key] = kept
            count = args.examples if point == points[-1] else args.examples_point
            evaluations[point] = _evaluate_point(args, arms, checkpoints, test_set, point, count, command)
    results = _summarise(args, arms, points, evaluations, command, time.perf_counter() - wall)
    write_text_atomic(args.out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    write_text_atomic(args.out / "results.md", _markdown(results))
    _plot(results, args.out / "trend.png")
    log(f"[cpu_study] wrote {args.out / 'results.md'} and trend.png", True)
    return results


def _evaluate_point(
    args: argparse.Namespace,
    arms: list[Arm],
    checkpoints: dict[str, Path],
    test_set: Any,
    point: int,
    count: int,
    command: str,
) -> dict[str, Any]:
    """Every arm's report at ``point`` (read back from disk where an earlier run wrote it)."""
    loader = DataLoader(Subset(test_set, range(min(count, len(test_set)))), batch_size=128)
    baseline, _ = load_model(checkpoints["pgd_at"])
    reports = {}
    for arm in arms:
        folder = args.out / f"eval_epoch{point}" / arm.key
        if not (folder / "report.json").exists():
            model, _ = load_model(checkpoints[arm.key])
            report = evaluate_both_protocols(
                model,
                loader,
                transfer_source=None if arm.policy is None else baseline,
                budget=args.budget,
                seed=args.seed,
                examples=count,
                analyses=False,
                device=args.device,
                subject=f"{arm.label}, ResNet-18 width {args.width}, epoch {point}, {checkpoints[arm.key]}",
            )
            report.config["provenance"] = provenance(
                command=command,
                seed=args.seed,
                device=args.device or "cpu",
                dataset="cifar10",
                split="test",
                data_dir=getattr(test_set, "source", None),
                checkpoints={"model": checkpoints[arm.key], "transfer": checkpoints["pgd_at"]},
            )
            report.save(folder)
        reports[arm.key] = json.loads((folder / "report.json").read_text())
    return reports


def _summarise(
    args: argparse.Namespace,
    arms: list[Arm],
    points: list[int],
    evaluations: dict[int, dict[str, Any]],
    command: str,
    seconds: float,
) -> dict[str, Any]:
    rows = []
    for point in points:
        reports = evaluations[point]
        for arm in arms:
            if arm.policy is None:
                continue
            pair = headline(reports["pgd_at"], reports[arm.key])
            for name, r in pair["rows"].items():  # clean, paper-protocol PGD, adaptive worst case
                rows.append(
                    {
                        "epoch": point,
                        "arm": arm.key,
                        "row": name,
                        "examples": pair["examples"],
                        "pgd_at": r["at"],
                        "dcs": r["dcs"],
                        "difference": r["difference"],
                    }
                )
    checkpoints = {
        arm.key: {f"epoch{p}": file_record(args.out / f"{arm.key}_epoch{p}.pt") for p in points}
        for arm in arms
    }
    return {
        "command": command,
        "settings": _settings(args),
        "points": points,
        "arms": {arm.key: arm.label for arm in arms},
        "rows": rows,
        "checkpoints": checkpoints,
        "seconds_this_run": seconds,
    }


def _cell(acc: dict[str, Any]) -> str:
    return f"{100 * acc['mean']:.2f} [{100 * acc['low']:.2f}, {100 * acc['high']:.2f}]"


def _markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [
        "# CPU study: DCS + GSAT vs PGD-AT on CIFAR-10, over training",
        "",
        f"`{results['command']}`",
        "",
        f"ResNet-18 width {s['width']}, {s['epochs']} epochs of "
        f"{s['samples_per_epoch'] or 50_000:,} images, lr {s['lr']} (/10 at 75 %), batch {s['batch_size']}, "
        f"seed {s['seed']}; evaluation budget {s['budget']}, both protocols, exact scoring over every tap "
        "set. Accuracy in % with its 95 % interval over images; the difference is paired over the same "
        "images.",
        "",
        "| epoch | images | arm | row | PGD-AT | DCS + GSAT | DCS - PGD-AT [95 %] |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        d = r["difference"]
        lines.append(
            f"| {r['epoch']} | {r['examples']} | {results['arms'][r['arm']]} | {r['row']} "
            f"| {_cell(r['pgd_at'])} | {_cell(r['dcs'])} "
            f"| {100 * d['mean']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] |"
        )
    lines += ["", "Checkpoints (sha256):", ""]
    for arm, files in results["checkpoints"].items():
        for point, record in files.items():
            lines.append(f"- {arm} {point}: `{record['path']}` {record['sha256']}")
    return "\n".join(lines) + "\n"


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["row"] for r in results["rows"]))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), sharex=True)
    series: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = {}
    for r in results["rows"]:
        series.setdefault((r["row"], "pgd_at"), []).append((r["epoch"], r["pgd_at"]))
        series.setdefault((r["row"], r["arm"]), []).append((r["epoch"], r["dcs"]))
    for ax, row in zip(axes, names, strict=True):
        for arm, label in results["arms"].items():
            points = sorted({e: a for e, a in series.get((row, arm), [])}.items())
            if not points:
                continue
            epochs = [e for e, _ in points]
            mean = [100 * a["mean"] for _, a in points]
            err = [
                [100 * (a["mean"] - a["low"]) for _, a in points],
                [100 * (a["high"] - a["mean"]) for _, a in points],
            ]
            ax.errorbar(epochs, mean, yerr=err, marker="o", capsize=3, label=label)
        ax.set_title(row)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%), 95 % interval")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: one line and exit status 2 for bad input, 130 on Ctrl-C (resume with --resume)."""
    try:
        run(argv)
    except DCSError as exc:
        print(f"cpu_study: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "cpu_study: interrupted; every finished epoch and evaluation is kept: rerun with --resume",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
