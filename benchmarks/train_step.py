"""One GSAT step of DCS-ResNet-18 vs one PGD-AT step of the plain ResNet-18: same batch, interleaved.

A step is what the training loop does per batch: the PGD-7 attack (eps 8/255, step 2/255; GSAT's with
frozen, recorded taps), the training forward (GSAT's from the complement of the attack's taps), the
backward and the SGD update. The two steps alternate (AT, GSAT, GSAT, AT, ...) so drift in machine
load hits both alike; the report is the median of each and the median of the per-pair ratios.
Goal: GSAT / PGD-AT <= 1.05x (the paper reports 379.96 / 213.47 min = 1.78x for its implementation).

    python benchmarks/train_step.py                       # CUDA if available, paper-size network
    python benchmarks/train_step.py --device cpu --width 16 --batch-size 32 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from dcspass.training import TrainConfig, build_network, make_method


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(method, net, optimizer, x, y, device) -> float:
    _sync(device)
    start = time.perf_counter()
    loss, _ = method.loss(net, x, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--width", type=int, default=64, help="ResNet-18 stage-1 channels (64 = paper)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=20, help="timed pairs")
    p.add_argument("--warmup", type=int, default=3, help="untimed pairs first")
    p.add_argument("--compile", action="store_true", help="torch.compile both networks")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args()
    device = torch.device(args.device)

    torch.manual_seed(0)
    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    runs = {}
    for method in ("pgd_at", "gsat"):
        config = TrainConfig(width=args.width, method=method, policy="index:6" if method == "gsat" else None)
        torch.manual_seed(0)
        net = build_network(config).to(device).train()
        strategy = make_method(method, config.eps, config.alpha, config.attack_steps)
        strategy.bind(net, compile=args.compile)
        model = torch.compile(net) if args.compile else net
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        runs[method] = (strategy, model, optimizer)

    times: dict[str, list[float]] = {"pgd_at": [], "gsat": []}
    for i in range(args.warmup + args.repeats):
        order = ("pgd_at", "gsat") if i % 2 == 0 else ("gsat", "pgd_at")
        for method in order:
            strategy, model, optimizer = runs[method]
            seconds = _step(strategy, model, optimizer, x, y, device)
            if i >= args.warmup:
                times[method].append(seconds)

    ratios = [g / a for g, a in zip(times["gsat"], times["pgd_at"], strict=True)]
    result = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "width": args.width,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "repeats": args.repeats,
        "compile": args.compile,
        "pgd_at_step_ms": 1000 * statistics.median(times["pgd_at"]),
        "gsat_step_ms": 1000 * statistics.median(times["gsat"]),
        "median_ratio": statistics.median(ratios),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{result['device']}, ResNet-18 width {args.width}, batch {args.batch_size}x3x{args.image_size}x"
        f"{args.image_size}, PGD-7, {args.repeats} interleaved pairs{' (compiled)' if args.compile else ''}"
    )
    print(f"PGD-AT step (plain ResNet-18):      {result['pgd_at_step_ms']:9.1f} ms (median)")
    print(f"GSAT step (DCS-ResNet-18, n=2 k=5): {result['gsat_step_ms']:9.1f} ms (median)")
    print(f"GSAT / PGD-AT: {result['median_ratio']:.3f}x (median of per-pair ratios; goal <= 1.05x)")


if __name__ == "__main__":
    main()
