"""GPU benchmark of the DCS op (Triton kernels) against the ways one could compute it otherwise.

Per layer shape, fwd+bwd (gradients of input and weight), bf16, channels_last, k=5, n=2, a fresh tap
draw per call:

- ``triton DCS``: ``dcspass.DCSConv2d`` (``torch.ops.dcspass.dcs_conv2d`` -> ``kernels/triton_*.py``);
- ``masked dense 5x5 (cuDNN)``: ``F.conv2d`` with the 5x5 weight masked to the taps, as the paper's layer;
- ``deform_conv2d``: ``torchvision.ops.deform_conv2d`` with zero offsets and the tap mask as its
  modulation mask (the same function through a deformable-conv kernel; fp32 if it has no bf16 kernel);
- ``3x3 conv (cuDNN)``: the ``nn.Conv2d`` the DCS layer replaces.

Shapes: CIFAR ResNet-18 ``layer2.0.conv1`` (64 -> 128, 32x32, stride 2) and the WRN-34-10
downsampling convs (``layer2.0.conv1``: 160 -> 320, 32x32; ``layer3.0.conv1``: 320 -> 640, 16x16;
stride 2), batch 128 and 512. Then one whole training step (forward, loss, backward, SGD) of the CIFAR
ResNet-18 in bf16 channels_last, with DCS at conv index 6 (``dcspass.transform(policy="index:6")``)
against the plain model.

Timing: candidates run interleaved, in rotating order, ``--rounds`` times; each round times ``--reps``
calls between CUDA events. The table reports median times and the median over rounds of the per-round
ratios, so clock drift and a noisy neighbour hit all candidates alike. Goals (issue 4): >= 5x faster
than the masked dense conv, no slower than the 3x3 conv, training step <= 1.05x the plain model.

Run: ``python benchmarks/op_gpu.py [--batches 128 512] [--rounds 15] [--markdown out.md]``.
Needs a CUDA GPU and the real Triton compiler (``TRITON_INTERPRET`` unset or 0).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEVICE = "cuda"
K, N = 5, 2  # the paper's DCS layer: 5x5 window, 2 taps
STEP_GOAL = 1.05
MASKED_GOAL = 5.0
CONV3_GOAL = 1.0
DCS, MASKED, DEFORM, CONV3 = "triton DCS", "masked dense 5x5 (cuDNN)", "deform_conv2d", "3x3 conv (cuDNN)"


@dataclass(frozen=True)
class LayerShape:
    name: str
    c_in: int
    c_out: int
    hw: int
    stride: int = 2


SHAPES = [
    LayerShape("RN18 layer2.0.conv1", 64, 128, 32),
    LayerShape("WRN-34-10 layer2.0.conv1", 160, 320, 32),
    LayerShape("WRN-34-10 layer3.0.conv1", 320, 640, 16),
]


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int, reps: int,
                warmup: int = 3) -> dict[str, list[float]]:
    """Milliseconds per call of each candidate, one entry per round, rounds in rotating order."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    names = list(candidates)
    times: dict[str, list[float]] = {name: [] for name in names}
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start.record()
            for _ in range(reps):
                candidates[name]()
            stop.record()
            stop.synchronize()
            times[name].append(start.elapsed_time(stop) / reps)
    return times


def median_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over rounds of ``t(numerator) / t(denominator)`` measured in the same round."""
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator], strict=True))


def tap_mask(taps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(K * K, device=taps.device, dtype=dtype).index_fill_(0, taps, 1.0).view(K, K)


def layer_candidates(shape: LayerShape, batch: int) -> tuple[dict[str, Callable[[], object]], str]:
    """The four fwd+bwd closures of one layer shape; and a note on deform_conv2d's dtype."""
    import torchvision

    import dcspass

    dev, dtype, fmt = DEVICE, torch.bfloat16, torch.channels_last
    x = torch.randn(batch, shape.c_in, shape.hw, shape.hw, device=dev, dtype=dtype)
    x = x.to(memory_format=fmt).requires_grad_()
    dcs = dcspass.DCSConv2d(shape.c_in, shape.c_out, K, N, stride=shape.stride, padding=K // 2, bias=False)
    dcs = dcs.to(dev, dtype)
    w5 = dcs.weight.detach().clone().requires_grad_()
    conv3 = torch.nn.Conv2d(shape.c_in, shape.c_out, 3, stride=shape.stride, padding=1, bias=False)
    conv3 = conv3.to(dev, dtype, memory_format=fmt)
    out_hw = conv3(x.detach()).shape[-1]  # the 3x3 conv DCS replaces keeps the same output size

    _check_dcs_is_triton_and_correct(dcs, x)

    def run_dcs():
        dcs(x).sum().backward()

    def run_masked():
        taps = dcs.draw_taps()
        F.conv2d(x, w5 * tap_mask(taps, dtype), None, shape.stride, K // 2).sum().backward()

    deform_dtype = dtype
    try:
        _deform(x, w5, shape, out_hw, dcs.draw_taps())
    except RuntimeError:  # no bf16 kernel in this torchvision build
        deform_dtype = torch.float32
    xd = x.detach().to(deform_dtype).requires_grad_()
    wd = w5.detach().to(deform_dtype).requires_grad_()
    offset = torch.zeros(batch, 2 * K * K, out_hw, out_hw, device=dev, dtype=deform_dtype)

    def run_deform():
        mask = tap_mask(dcs.draw_taps(), deform_dtype).view(1, K * K, 1, 1).expand(batch, -1, out_hw, out_hw)
        torchvision.ops.deform_conv2d(xd, offset, wd, None, shape.stride, K // 2, mask=mask).sum().backward()

    def run_conv3():
        conv3(x).sum().backward()

    note = "" if deform_dtype == dtype else "deform_conv2d ran in fp32 (no bf16 kernel)"
    return {DCS: run_dcs, MASKED: run_masked, DEFORM: run_deform, CONV3: run_conv3}, note


def _deform(x, w, shape, out_hw, taps):
    import torchvision

    mask = tap_mask(taps, x.dtype).view(1, K * K, 1, 1).expand(x.shape[0], -1, out_hw, out_hw)
    offset = torch.zeros(x.shape[0], 2 * K * K, out_hw, out_hw, device=x.device, dtype=x.dtype)
    return torchvision.ops.deform_conv2d(x, offset, w, None, shape.stride, K // 2, mask=mask)


def _check_dcs_is_triton_and_correct(dcs, x) -> None:
    """Refuse to time a path that is not the Triton one, or that computes the wrong thing."""
    import dcspass
    from kernels import op, triton_backend

    if op._backend(x, dcs.weight, dcs.groups) is not triton_backend:
        sys.exit("the DCS op did not route this call to the Triton backend; nothing to benchmark")
    taps = dcs.draw_taps()
    with torch.no_grad(), dcspass.using_taps(dcs, taps):
        got = dcs(x).float()
        masked = dcs.weight.float() * tap_mask(taps, torch.float32)
        ref = F.conv2d(x.float(), masked, None, dcs.stride, K // 2)
    error = (got - ref).abs().max().item() / ref.abs().max().item()
    if error > 1e-2:
        sys.exit(f"Triton DCS output differs from the masked conv by {error:.3g} (relative): not timing it")


def training_step_candidates(batch: int) -> dict[str, Callable[[], object]]:
    """One SGD step of the CIFAR ResNet-18, plain and with DCS at conv index 6 (bf16, channels_last)."""
    import dcspass
    from dcspass.models import build_model

    torch.manual_seed(0)
    plain = build_model("resnet18", num_classes=10)
    with_dcs = dcspass.transform(plain, policy="index:6", n=N, k=K)
    x = torch.randn(batch, 3, 32, 32, device=DEVICE, dtype=torch.bfloat16)
    x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=DEVICE)
    steps = {}
    for name, model in (("ResNet-18 plain", plain), ("ResNet-18 + DCS at index 6", with_dcs)):
        model = model.to(DEVICE, torch.bfloat16, memory_format=torch.channels_last).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

        def step(model=model, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x).float(), y).backward()
            optimizer.step()

        steps[name] = step
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--markdown", help="also write the tables, as markdown, to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/op_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); "
                 "for CPU timings run benchmarks/op.py")
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        sys.exit("unset TRITON_INTERPRET: the interpreter is for correctness tests, not timings")
    torch.backends.cudnn.benchmark = True
    device = torch.cuda.get_device_name()
    lines = [f"Device: {device}; torch {torch.__version__}; bf16, channels_last, k={K}, n={N}, fwd+bwd; "
             f"medians of {args.rounds} interleaved rounds x {args.reps} calls.", ""]
    lines += ["| layer | batch | triton DCS ms | masked dense ms | deform_conv2d ms | 3x3 conv ms | "
              "DCS vs masked | DCS vs 3x3 | DCS vs deform |", "|" + "---|" * 9]
    notes, goals = set(), []
    for shape in SHAPES:
        for batch in args.batches:
            candidates, note = layer_candidates(shape, batch)
            if note:
                notes.add(note)
            times = interleaved(candidates, rounds=args.rounds, reps=args.reps)
            ms = {name: statistics.median(t) for name, t in times.items()}
            vs = {name: median_ratio(times, name, DCS) for name in (MASKED, CONV3, DEFORM)}  # > 1: DCS faster
            lines.append(
                f"| {shape.name} | {batch} | {ms[DCS]:.3f} | {ms[MASKED]:.3f} | {ms[DEFORM]:.3f} | "
                f"{ms[CONV3]:.3f} | {vs[MASKED]:.2f}x | {vs[CONV3]:.2f}x | {vs[DEFORM]:.2f}x |"
            )
            print(lines[-1], flush=True)
            goals.append((f"{shape.name} b{batch}: >= {MASKED_GOAL}x faster than masked dense",
                          vs[MASKED] >= MASKED_GOAL))
            goals.append((f"{shape.name} b{batch}: no slower than the 3x3 conv", vs[CONV3] >= CONV3_GOAL))
    lines += [""] + [f"- {note}" for note in sorted(notes)]
    lines += ["", "| training step (ResNet-18, CIFAR, bf16) | batch | ms | ratio to plain |",
              "|---|---|---|---|"]
    for batch in args.batches:
        steps = training_step_candidates(batch)
        plain_name, dcs_name = list(steps)
        times = interleaved(steps, rounds=args.rounds, reps=max(1, args.reps // 2))
        for name in steps:
            ratio = median_ratio(times, name, plain_name)
            lines.append(f"| {name} | {batch} | {statistics.median(times[name]):.2f} | {ratio:.3f} |")
            print(lines[-1], flush=True)
        step_ratio = median_ratio(times, dcs_name, plain_name)
        goals.append((f"training step b{batch}: <= {STEP_GOAL}x plain ({step_ratio:.3f}x)",
                      step_ratio <= STEP_GOAL))
    lines += ["", "Goals:"] + [f"- {'PASS' if ok else 'MISS'}: {what}" for what, ok in goals]
    text = "\n".join(lines)
    print("\n" + text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
