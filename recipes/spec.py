"""A recipe's description and its command line: specs, flags, presets, data and training configs.

A recipe is a ``RecipeSpec``: network, datasets, DCS placements, the paper's hyperparameters, and
its CPU-scale default. ``--scale cpu`` (the default) runs that default on CIFAR-10 from ``./data``
(``python -m dcspass data fetch cifar10`` puts it there); ``--scale paper`` runs the paper's settings
(200 epochs for ResNet-18: a GPU job); ``--dataset fashion_mnist`` keeps the small stand-in.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, TensorDataset

from dcspass import bounds
from dcspass.data import dataset_info, default_workers, fashion_mnist_tensors, load_dataset
from dcspass.errors import ConfigError
from dcspass.files import remove_stale_temporaries
from dcspass.training import TrainConfig, build_network
from dcspass.training.checkpoint import check_compatible, load_checkpoint
from dcspass.training.config import PRECISIONS

__all__ = [
    "CHECKPOINT_LABELS",
    "QUICK_EXAMPLES",
    "RESULTS",
    "SCALES",
    "Placement",
    "RecipeSpec",
    "build_parser",
    "check_args",
    "check_networks",
    "check_out",
    "check_seeds_summary",
    "load_data",
    "make_configs",
    "parse_args",
    "placement_message",
    "plan_trainings",
    "resolve_dataset",
    "resume_command",
]

# --scale cpu runs the recipe's embedded CPU-scale settings; --scale paper the paper's.
SCALES = ("cpu", "paper")

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

    ``paper`` holds ``TrainConfig`` fields for the paper-scale run (``--scale paper``, on the first of
    ``datasets``); ``embedded`` the overrides for the CPU-scale default (``--scale cpu``, on CIFAR-10
    for every recipe); ``presets``
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
        "By default: CIFAR-10 from ./data at CPU scale (--scale paper for the paper's settings).",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="dataset folder (default: $DCSPASS_DATA or ./data; Fashion-MNIST: Debian's folder)",
    )
    p.add_argument(
        "--dataset",
        choices=sorted({*spec.datasets, "cifar10", "fashion_mnist"}),
        default=None,
        help=f"default: cifar10 at --scale cpu, {spec.datasets[0]} at --scale paper",
    )
    p.add_argument(
        "--scale",
        choices=SCALES,
        default="cpu",
        help="cpu: the recipe's CPU-scale settings (default); paper: the paper's (a GPU job)",
    )
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


def check_args(args: argparse.Namespace, spec: RecipeSpec) -> None:
    counts = ("epochs", "batch_size", "width", "samples_per_epoch", "eval_examples", "examples", "n", "k")
    for flag in (*counts, "seeds"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.lr is not None and args.lr <= 0:
        raise ConfigError(f"--lr must be > 0, got {args.lr}")


def plan_trainings(
    args: argparse.Namespace, base_cfg: TrainConfig, dcs_cfg: TrainConfig
) -> list[tuple[str, TrainConfig, str]]:
    """``(key, config, checkpoint label)`` of every network the recipe trains, in training order."""
    trainings = [("at", base_cfg, "pgd_at"), ("dcs", dcs_cfg, "gsat")]
    if args.fig4a:
        # The paper's Fig. 4a: the same DCS network trained with GSAT's attack (one frozen draw) but
        # without excluding the attacked taps from the training draw (one change from GSAT), and
        # trained clean (no attack at all).
        trainings += [
            ("dcs_frozen", replace(dcs_cfg, method="frozen_pgd_at"), "dcs_frozen_pgd_at"),
            ("dcs_clean", replace(dcs_cfg, method="clean"), "dcs_clean"),
        ]
    return trainings


# Every checkpoint a recipe may write (with or without --fig4a), and the report it writes last.
CHECKPOINT_LABELS = ("pgd_at", "gsat", "dcs_frozen_pgd_at", "dcs_clean")
RESULTS = "results.json"


def check_networks(trainings: list[tuple[str, TrainConfig, str]]) -> None:
    """Build every distinct network once, so Eq. 12 or a bad k fails before the first epoch of any run."""
    seen: set[str] = set()
    for _key, cfg, _label in trainings:
        identity = json.dumps({k: v for k, v in cfg.to_dict().items() if k != "method"}, sort_keys=True)
        if identity not in seen:
            seen.add(identity)
            build_network(cfg)


def held_run_files(out: Path) -> list[Path]:
    """The checkpoints and ``results.json`` of a single-seed run that ``out`` already holds."""
    held = [out / f"{label}.pt" for label in CHECKPOINT_LABELS] + [out / RESULTS]
    return [path for path in held if path.exists()]


def check_out(
    args: argparse.Namespace, trainings: list[tuple[str, TrainConfig, str]], is_main: bool = True
) -> None:
    """What ``--out`` already holds: refuse a silent overwrite; under ``--resume``, check each checkpoint
    against the config of the network that will continue it; under ``--overwrite``, remove the old run
    (``is_main`` only). Every rank runs the checks, so a refusal stops all of them, not rank 0 alone."""
    held = held_run_files(args.out)
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


def check_seeds_summary(args: argparse.Namespace) -> None:
    """``--seeds N > 1`` writes ``OUT/results.json`` at the end: refuse, before any training, an ``OUT``
    that already holds a run's results or checkpoints, which that file would overwrite or mix with."""
    held = held_run_files(args.out)
    if held:
        raise ConfigError(
            f"--out {args.out} already holds a run ({', '.join(path.name for path in held)}) that the "
            f"{args.seeds}-seed summary would overwrite; pass --resume to continue a multi-seed run there, "
            "or --overwrite (or another --out) to start afresh"
        )


def resume_command(spec: RecipeSpec, argv: Sequence[str]) -> str:
    """The command line that continues this run: the same flags, ``--resume`` instead of ``--overwrite``."""
    flags = [a for a in argv if a != "--overwrite"]
    if "--resume" not in flags:
        flags.append("--resume")
    return shlex.join(["python", "-m", f"recipes.{spec.name}", *flags])


def resolve_dataset(args: argparse.Namespace, spec: RecipeSpec) -> str:
    """``--dataset``, else CIFAR-10 at CPU scale and the recipe's own dataset at paper scale."""
    return args.dataset or ("cifar10" if args.scale == "cpu" else spec.datasets[0])


def load_data(args: argparse.Namespace, spec: RecipeSpec) -> tuple[str, Dataset, Dataset]:
    """(name, train set, test set), read from ``--data-dir`` (default ``./data``; Fashion-MNIST from
    Debian's folder). Both are held in memory, so loading needs no worker processes."""
    name = resolve_dataset(args, spec)
    if name == "fashion_mnist":
        return (
            name,
            TensorDataset(*fashion_mnist_tensors(True, data_dir=args.data_dir)),
            TensorDataset(*fashion_mnist_tensors(False, data_dir=args.data_dir)),
        )
    return name, load_dataset(name, args.data_dir, train=True), load_dataset(name, args.data_dir, train=False)


def make_configs(args: argparse.Namespace, spec: RecipeSpec, dataset: str) -> tuple[TrainConfig, TrainConfig]:
    """(PGD-AT baseline, DCS + GSAT): identical but for the DCS pass and the method."""
    info = dataset_info(dataset)
    fields: dict[str, Any] = {**spec.paper, **(spec.embedded if args.scale == "cpu" else {})}
    fields.setdefault("workers", default_workers())
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


def placement_message(spec: RecipeSpec, placement_name: str, n: int, k: int) -> str:
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
