"""Time of the adaptive protocol (budget ``full`` by default) for the DCS ResNet-18 of the embedded default.

Two measurements:

1. the whole adaptive protocol (EOT-PGD 100 x 20, APGD-CE/-DLR 100 it. with EOT 20, exact expectation
   over 300 tap sets for 100 steps, known taps, Square 5000 queries x 20 forwards, pyautoattack's
   ``standard`` and ``rand`` at the reference settings when it is installed, K = 20 scoring draws and
   20 more for the worst-case choice; no transfer attack, which needs a second network) on
   ``--examples`` Fashion-MNIST test images, with the time per attack; with fewer than 1,000 images
   the 1,000-image time is extrapolated linearly and labelled so;
2. the shared prefix: one EOT step (forward + backward over ``--draws`` draws) with the prefix before
   the first DCS layer computed once (``DrawRunner``'s torch.fx split) vs one full forward per draw.

    python benchmarks/eval_adaptive.py --examples 1000                   # the issue's measurement
    python benchmarks/eval_adaptive.py --examples 8 --checkpoint ck.pt   # quick, extrapolated
    python benchmarks/eval_adaptive.py --prefix-only
    python benchmarks/eval_adaptive.py --estimate --examples 1000       # per-step times x step counts

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


def estimate_full(model: torch.nn.Module, device: torch.device, budget_name: str, images: int) -> dict:
    """Time one step of each kind on one batch of the budget and multiply by the steps the budget runs.

    An upper-bound extrapolation (labelled so): Square is counted as if no image were ever broken,
    and every attack as if it ran every step on every image.
    """
    from dcspass.evaluation import get_budget
    from dcspass.evaluation.draws import all_tap_sets

    b = get_budget(budget_name)
    x = fashion_mnist_tensors(train=False, limit=b.batch_size)[0].to(device)
    runner = DrawRunner(model)
    first = runner.first_layer

    def fb(sets: TapSets) -> float:
        xa = x.clone().requires_grad_(True)
        start = time.perf_counter()
        runner(xa, sets).softmax(-1).mean(0)[:, 0].sum().backward()
        return time.perf_counter() - start

    def fwd(draws: int) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            runner(x, TapSets.sample(draws))
        return time.perf_counter() - start

    def fwd_sets(sets: torch.Tensor) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            runner(x, TapSets.given(sets))
        return time.perf_counter() - start

    fb(TapSets.sample(2))  # warm up
    unit = {
        "eot_step": fb(TapSets.sample(b.eot_samples)),
        "exact_step": fb(TapSets.given(all_tap_sets(first))),
        "plain_step": fb(TapSets.sample(1)),
        "eot_forward": fwd(b.square_eot),
        "plain_forward": fwd(1),
        "score_exact": fwd_sets(all_tap_sets(first)),
    }
    batches = -(-images // b.batch_size)
    parts = {
        "EOT-PGD": b.eot_steps * unit["eot_step"],
        "APGD-CE + APGD-DLR (EOT)": 2 * b.apgd_steps * unit["eot_step"] * b.apgd_eot / b.eot_samples,
        "exact expectation": b.exact_steps * unit["exact_step"],
        "Square (EOT)": b.square_queries * unit["eot_forward"],
        "known taps + transfer": (b.known_steps + b.transfer_steps) * unit["plain_step"],
        # pyautoattack runs the model itself, one draw per forward: no shared prefix, no batched draws.
        "pyautoattack rand": 2 * (b.reference_steps + 1) * b.reference_eot * unit["plain_step"],
        "pyautoattack standard": (b.reference_steps + 1) * (1 + 2 * b.reference_targets) * unit["plain_step"]
        + b.reference_square_queries * unit["plain_forward"],
        # clean + 9 attack rows, each scored exactly over every tap set (the derived rows are minima).
        "scoring": 10 * unit["score_exact"],
    }
    total = batches * sum(parts.values())
    print(f"\nEXTRAPOLATED full adaptive protocol (budget {b.name}), {images} images, {device}:")
    for name, seconds in parts.items():
        print(f"  {name:28s} {batches * seconds / 60:8.1f} min")
    print(f"  {'total':28s} {total / 60:8.1f} min  (= {total / 3600:.1f} h; per-batch unit times {unit})")
    return {
        "unit_seconds": unit,
        "batches": batches,
        "minutes": {k: batches * v / 60 for k, v in parts.items()},
        "total_minutes": total / 60,
        "extrapolated": True,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=1000)
    p.add_argument("--budget", default="full")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--prefix-only", action="store_true")
    p.add_argument("--estimate", action="store_true", help="extrapolate from one step of each kind")
    p.add_argument("--draws", type=int, default=20)
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    args = p.parse_args()
    device = torch.device(args.device)
    model = _model(args, device)
    out: dict = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "width": f"from {args.checkpoint}" if args.checkpoint else args.width,
    }
    if args.estimate:
        out["estimate"] = estimate_full(model, device, args.budget, args.examples)
    else:
        out["prefix"] = prefix_benchmark(model, device, 16, args.draws)
    if not args.prefix_only and not args.estimate:
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
