"""Time of the adaptive protocol (budget ``full`` by default) for the DCS ResNet-18 of the embedded default.

Two measurements:

1. the whole adaptive protocol (EOT-PGD 100 x 20, APGD-CE/-DLR 100 it. with EOT 20, exact expectation
   over 300 tap sets for 100 steps, known taps, Square 5000 queries x 20 forwards, K = 20 scoring draws)
   on ``--examples`` Fashion-MNIST test images, with the time per attack; with fewer than 1,000
   images the 1,000-image time is extrapolated linearly and labelled so;
2. the shared prefix: one EOT step (forward + backward over ``--draws`` draws) with the prefix before
   the first DCS layer computed once (``DrawRunner``'s torch.fx split) vs one full forward per draw.

    python benchmarks/eval_adaptive.py --examples 1000                   # the issue's measurement
    python benchmarks/eval_adaptive.py --examples 8 --checkpoint ck.pt   # quick, extrapolated
    python benchmarks/eval_adaptive.py --prefix-only

Without ``--checkpoint`` the network is freshly initialised: it misclassifies most images, and
attacks that skip misclassified images (Square) then finish early, so pass a trained checkpoint for
a time that stands for a real evaluation.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _timing import compare, print_table

from dcspass.data import fashion_mnist_tensors
from dcspass.evaluation import evaluate
from dcspass.evaluation.draws import DrawRunner, TapSets
from dcspass.training import TrainConfig, build_network


def _model(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    if args.checkpoint:
        from dcspass.training.checkpoint import load_model

        return load_model(args.checkpoint, map_location=device)[0]
    torch.manual_seed(0)
    config = TrainConfig(
        arch="resnet18", num_classes=10, in_channels=1, width=args.width, dataset="fashion_mnist"
    )
    return build_network(config).to(device).eval()


def prefix_benchmark(model: torch.nn.Module, device: torch.device, batch: int, draws: int) -> dict:
    x = fashion_mnist_tensors(train=False, limit=batch)[0].to(device)
    split, full = DrawRunner(model), DrawRunner(model, split=False)

    def step(runner: DrawRunner):
        def run():
            xa = x.clone().requires_grad_(True)
            runner(xa, TapSets.sample(draws)).softmax(-1).mean(0)[:, 0].sum().backward()

        return run

    result = compare(
        {"full forwards": step(full), "shared prefix": step(split)}, baseline="full forwards", rounds=5
    )
    print_table(f"one EOT step, {draws} draws x {batch} images (forward + backward)", result)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=1000)
    p.add_argument("--budget", default="full")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--prefix-only", action="store_true")
    p.add_argument("--draws", type=int, default=20)
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    args = p.parse_args()
    device = torch.device(args.device)
    model = _model(args, device)
    out: dict = {"device": str(device), "torch_threads": torch.get_num_threads(), "width": args.width}
    out["prefix"] = prefix_benchmark(model, device, 16, args.draws)
    if not args.prefix_only:
        from dcspass.evaluation import get_budget

        budget = get_budget(args.budget)
        x, y = fashion_mnist_tensors(train=False, limit=args.examples)
        loader = [
            (x[i : i + budget.batch_size], y[i : i + budget.batch_size])
            for i in range(0, len(x), budget.batch_size)
        ]
        start = time.perf_counter()
        report = evaluate(model, loader, protocol="adaptive", budget=budget, device=device, analyses=False)
        seconds = time.perf_counter() - start
        per_1000 = seconds * 1000 / args.examples
        out["adaptive"] = {
            "budget": budget.name,
            "examples": args.examples,
            "seconds": seconds,
            "seconds_per_1000_images": per_1000,
            "extrapolated": args.examples < 1000,
            "per_attack_seconds": report.adaptive.seconds,
            "accuracies": {k: v.mean for k, v in report.adaptive.accuracies.items()},
        }
        label = " (extrapolated linearly)" if args.examples < 1000 else ""
        print(
            f"\nadaptive protocol, budget {budget.name}, {args.examples} images on {device}: {seconds:.1f} s"
        )
        print(f"per 1,000 images{label}: {per_1000 / 60:.1f} min")
        for name, s in report.adaptive.seconds.items():
            print(f"  {name:20s} {s:8.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
