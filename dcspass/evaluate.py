"""Command line: evaluate a trained checkpoint under the paper and adaptive protocols.

    python -m dcspass.evaluate --checkpoint runs/gsat/checkpoint.pt --protocol both --repeats 10 \\
        --budget default --out runs/gsat/eval [--data-dir DIR --dataset cifar10] \\
        [--transfer-checkpoint runs/pgd_at/checkpoint.pt]

Writes ``report.json``, ``report.md`` and PNGs into ``--out`` and prints the markdown report. The
Python API is ``dcspass.evaluate`` (``dcspass.evaluation.evaluate``); this module is only the CLI.
"""

from __future__ import annotations

import argparse
import sys
import types
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader

from .errors import DCSError, EvaluationError
from .evaluation import BUDGETS, evaluate


def _eps(text: str) -> float:
    """``"8/255"`` or ``"0.0314"`` -> float (range checked by ``evaluate``)."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"eps must be a number or a fraction like 8/255, got {text!r}"
        ) from exc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dcspass.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint written by dcspass training")
    p.add_argument("--data-dir", default=None, help="dataset folder (Fashion-MNIST defaults to Debian's)")
    p.add_argument("--dataset", default=None, help="dataset name (default: the checkpoint's)")
    p.add_argument("--protocol", choices=("paper", "adaptive", "both"), default="both")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="default")
    p.add_argument("--repeats", type=int, default=None, help="paper-protocol repeats (default: the budget's)")
    p.add_argument("--eps", type=_eps, default=8 / 255, help="L_inf radius on [0, 1], e.g. 8/255")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--transfer-checkpoint", default=None, help="the same network trained without DCS")
    p.add_argument("--no-analyses", action="store_true", help="skip gradient similarity and strength sweeps")
    p.add_argument("--out", required=True, help="output folder for report.json, report.md and PNGs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .data import dataset_info, load_dataset
    from .training.checkpoint import load_model

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        model, config = load_model(args.checkpoint, map_location=device)
        name = args.dataset or config.get("dataset")
        info = dataset_info(name)
        if info.num_classes != config.get("num_classes") or info.in_channels != config.get("in_channels"):
            raise EvaluationError(
                f"checkpoint {args.checkpoint} is a {config.get('num_classes')}-class, "
                f"{config.get('in_channels')}-channel {config.get('arch')}, but {name} has "
                f"{info.num_classes} classes and {info.in_channels} channels; pass the matching --dataset"
            )
        source = None
        if args.transfer_checkpoint:
            source, _ = load_model(
                args.transfer_checkpoint,
                map_location=device,
                expect={k: config[k] for k in ("arch", "num_classes", "in_channels")},
            )
        dataset = load_dataset(name, args.data_dir, train=False, transform="default")
        loader = DataLoader(dataset, batch_size=BUDGETS[args.budget].batch_size, shuffle=False)
        report = evaluate(
            model,
            loader,
            protocol=args.protocol,
            budget=args.budget,
            transfer_source=source,
            device=device,
            seed=args.seed,
            eps=args.eps,
            repeats=args.repeats,
            analyses=not args.no_analyses,
        )
    except DCSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = report.save(args.out)
    print(report.to_markdown())
    print(f"wrote {out / 'report.json'}, {out / 'report.md'} and plots", file=sys.stderr)
    return 0


class _CallableModule(types.ModuleType):
    """Importing ``dcspass.evaluate`` (this CLI) rebinds the package attribute ``dcspass.evaluate`` from
    the function to this module; calling the module forwards to the function, so both keep working."""

    def __call__(self, *args, **kwargs):
        return evaluate(*args, **kwargs)


if __name__ == "__main__":
    sys.exit(main())
else:
    sys.modules[__name__].__class__ = _CallableModule
