"""Whole-model cost of DCS: torchvision ResNet-18 with ``policy="index:6"`` vs the original.

    python benchmarks/model.py [--batch 64] [--size 32] [--rounds 10] [--device cpu|cuda]

Times inference (eval, no_grad) and a training step (forward, cross-entropy, backward, SGD step) at
batch 64 on 32x32 inputs, as the paper's CIFAR setting. The two models run interleaved (alternating
which goes first) so drift in machine load hits both alike; each round gives a ratio DCS / original,
and the median ratio is reported. Goals: inference <= 1.02x, training step <= 1.05x (the paper's own
implementation: 1.12x and 1.78x).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

import dcspass

GOALS = {"inference": 1.02, "training step": 1.05}


def _timer(device: torch.device) -> Callable[[], float]:
    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    return now


def _inference(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    model.eval()

    def step() -> None:
        with torch.no_grad():
            model(x)

    return step


def _training(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    return step


def compare(
    original: Callable[[], None], dcs: Callable[[], None], rounds: int, iters: int, now: Callable[[], float]
) -> tuple[float, float, float]:
    """Median ms per call of each, and the median of the per-round ratios dcs / original."""
    for _ in range(3):  # warm-up: allocator, caches, first-call dispatch
        original()
        dcs()
    times = {"original": [], "dcs": []}
    ratios = []
    for r in range(rounds):
        order = [("original", original), ("dcs", dcs)]
        if r % 2:
            order.reverse()
        spent = {}
        for name, fn in order:
            start = now()
            for _ in range(iters):
                fn()
            spent[name] = (now() - start) / iters
            times[name].append(spent[name])
        ratios.append(spent["dcs"] / spent["original"])
    return (
        1e3 * statistics.median(times["original"]),
        1e3 * statistics.median(times["dcs"]),
        statistics.median(ratios),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--iters", type=int, default=2, help="calls per model per round")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--policy", default="index:6")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    original = torchvision.models.resnet18(weights=None, num_classes=10).to(device)
    dcs = dcspass.transform(original, args.policy)
    layers = ", ".join(f"{n} (k={m.kernel_size}, n={m.n})" for n, m in dcspass.dcs_layers(dcs))
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    now = _timer(device)
    print(f"ResNet-18, policy={args.policy!r}: DCS layers {layers}")
    print(
        f"batch {args.batch}, {args.size}x{args.size}, device {device} "
        f"({torch.get_num_threads()} CPU threads), {args.rounds} interleaved rounds x {args.iters} calls"
    )
    print(f"{'':<14} {'original ms':>12} {'DCS ms':>10} {'median ratio':>13} {'goal':>6}")
    results = {
        "inference": compare(_inference(original, x), _inference(dcs, x), args.rounds, args.iters, now),
        "training step": compare(
            _training(original, x, y), _training(dcs, x, y), args.rounds, args.iters, now
        ),
    }
    for name, (t_orig, t_dcs, ratio) in results.items():
        verdict = "ok" if ratio <= GOALS[name] else "MISSED"
        print(f"{name:<14} {t_orig:>12.2f} {t_dcs:>10.2f} {ratio:>12.3f}x {GOALS[name]:>5.2f}x {verdict}")


if __name__ == "__main__":
    main()
