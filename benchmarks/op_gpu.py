"""GPU benchmark of the DCS op (Triton kernels) against the ways one could compute it otherwise.

Per layer shape, fwd+bwd (gradients of input and weight), bf16, channels_last, k=5, n=2, a fresh tap
draw per call:

- ``DCS eager``: ``dcspass.DCSConv2d`` (``torch.ops.dcspass.dcs_conv2d`` -> the Triton kernels);
- ``DCS compiled``: the same module under ``torch.compile`` (Inductor launches the kernels);
- ``DCS graphed``: ``torch.compile(mode="reduce-overhead")``, i.e. replayed CUDA graphs;
- ``masked dense 5x5 (cuDNN)``: ``F.conv2d`` with the 5x5 weight masked to the taps, as the paper's layer;
- ``deform_conv2d``: ``torchvision.ops.deform_conv2d`` with zero offsets and the tap mask as its
  modulation mask (the same function through a deformable-conv kernel; fp32 if it has no bf16 kernel);
- ``3x3 conv (cuDNN)``: the ``nn.Conv2d`` the DCS layer replaces.

Shapes: CIFAR ResNet-18 ``layer2.0.conv1`` (64 -> 128, 32x32, stride 2) and the WRN-34-10
downsampling convs (``layer2.0.conv1``: 160 -> 320, 32x32; ``layer3.0.conv1``: 320 -> 640, 16x16;
stride 2), batch 128 and 512. Then one whole training step (forward, loss, backward, SGD; the step of
``benchmarks/model.py``) of the CIFAR ResNet-18 in bf16 channels_last, with DCS at conv index 6
(``dcspass.transform(policy="index:6")``) against the plain model, eager, compiled and graphed.

Three times per candidate, in milliseconds per call:

- GPU: CUDA events around ``--reps`` calls queued while the stream is held by a spin kernel, so the
  host is far ahead and the GPU runs the calls back to back (``ahead`` in the JSON says whether the
  host really finished queueing before the GPU started; if not, the GPU time includes host gaps);
- host: the wall-clock time the Python thread spends issuing one call (no synchronisation);
- wall: a synchronised loop, candidates interleaved in rotating order over ``--rounds`` rounds; the
  wall ratios are medians of per-round ratios, so drift and noisy neighbours hit all candidates alike.

Goals: DCS >= 5x faster than the masked dense conv in GPU time at every shape and >= 2x in eager wall
time at batch 512; eager DCS no slower than the 3x3 conv in wall time; the training step <= 1.05x the
plain model's in every mode.

Run: ``python benchmarks/op_gpu.py [--batches 128 512] [--rounds 7] [--json out.json] [--markdown out.md]``.
Needs a CUDA GPU and the real Triton compiler (``TRITON_INTERPRET`` unset or 0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import _training  # the training step benchmarks/model.py times

DEVICE = "cuda"
K, N = 5, 2  # the paper's DCS layer: 5x5 window, 2 taps
STEP_GOAL = 1.05
MASKED_GPU_GOAL = 5.0
MASKED_WALL_GOAL = 2.0  # eager, at batch 512
CONV3_GOAL = 1.0
DCS_EAGER, DCS_COMPILED, DCS_GRAPHED = "DCS eager", "DCS compiled", "DCS graphed"
MASKED, DEFORM, CONV3 = "masked dense 5x5 (cuDNN)", "deform_conv2d", "3x3 conv (cuDNN)"
MODES = {"eager": None, "compiled": "default", "graphed": "reduce-overhead"}  # torch.compile mode


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


def interleaved(
    candidates: dict[str, Callable[[], object]], rounds: int, reps: int, warmup: int = 3
) -> dict[str, list[float]]:
    """Milliseconds per call of each candidate, one entry per round, rounds in rotating order."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    names = list(candidates)
    times: dict[str, list[float]] = {name: [] for name in names}
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
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


def _cycles_per_ms() -> float:
    """Clock cycles of ``torch.cuda._sleep`` per millisecond on this GPU (measured once)."""
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    cycles = 10_000_000
    start.record()
    torch.cuda._sleep(cycles)
    stop.record()
    stop.synchronize()
    return cycles / start.elapsed_time(stop)


def gpu_and_host(fn: Callable[[], object], reps: int, cycles_per_ms: float) -> dict[str, float | bool]:
    """GPU and host milliseconds per call of ``fn``, from ``reps`` calls queued behind a spin kernel.

    The spin holds the stream for twice the host time the calls were estimated to need, so the GPU
    starts on a full queue; ``ahead`` is False when the host was still queueing as the GPU started.
    """
    torch.cuda.synchronize()
    begin = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    estimate_ms = 1e3 * (time.perf_counter() - begin)
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(int(2 * reps * estimate_ms * cycles_per_ms) + 1000)
    start.record()
    begin = time.perf_counter()
    for _ in range(reps):
        fn()
    host_ms = 1e3 * (time.perf_counter() - begin) / reps
    ahead = not start.query()  # the spin still held the stream when the last call was queued
    stop.record()
    stop.synchronize()
    return {"gpu_ms": start.elapsed_time(stop) / reps, "host_ms": host_ms, "ahead": ahead}


def layer_candidates(shape: LayerShape, batch: int) -> tuple[dict[str, Callable[[], object]], str]:
    """The fwd+bwd closures of one layer shape (three DCS modes, three baselines); and a note on
    deform_conv2d's dtype."""
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
    dcs_modes = {
        DCS_EAGER: dcs,
        DCS_COMPILED: torch.compile(dcs, fullgraph=True),
        DCS_GRAPHED: torch.compile(dcs, mode="reduce-overhead", fullgraph=True),
    }

    def run_dcs(module):
        return lambda: module(x).sum().backward()

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
    candidates = {name: run_dcs(module) for name, module in dcs_modes.items()}
    return {**candidates, MASKED: run_masked, DEFORM: run_deform, CONV3: run_conv3}, note


def _deform(x, w, shape, out_hw, taps):
    import torchvision

    mask = tap_mask(taps, x.dtype).view(1, K * K, 1, 1).expand(x.shape[0], -1, out_hw, out_hw)
    offset = torch.zeros(x.shape[0], 2 * K * K, out_hw, out_hw, device=x.device, dtype=x.dtype)
    return torchvision.ops.deform_conv2d(x, offset, w, None, shape.stride, K // 2, mask=mask)


def _check_dcs_is_triton_and_correct(dcs, x) -> None:
    """Refuse to time a path that is not the Triton one, or that computes the wrong thing."""
    import dcspass
    from dcspass.kernels import op, triton_backend

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
    """One SGD step (``benchmarks/model.py``'s) of the CIFAR ResNet-18, plain and with DCS at conv index
    6, bf16 channels_last, eager, compiled and graphed: ``{"<mode> plain" | "<mode> DCS": step}``."""
    import dcspass
    from dcspass.models import build_model

    torch.manual_seed(0)
    plain = build_model("resnet18", num_classes=10)
    with_dcs = dcspass.transform(plain, policy="index:6", n=N, k=K)
    x = torch.randn(batch, 3, 32, 32, device=DEVICE, dtype=torch.bfloat16)
    x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=DEVICE)
    steps = {}
    for kind, model in (("plain", plain), ("DCS", with_dcs)):
        model = model.to(DEVICE, torch.bfloat16, memory_format=torch.channels_last)
        for mode, compile_mode in MODES.items():
            wrapped = model if compile_mode is None else torch.compile(model, mode=compile_mode)
            steps[f"{mode} {kind}"] = _training(wrapped, x, y)
    return steps


def _measure(
    candidates: dict[str, Callable[[], object]], args: argparse.Namespace, cycles_per_ms: float, queue: int
) -> tuple[dict[str, dict], dict[str, list[float]]]:
    """GPU/host times per candidate, and the interleaved wall times (ms per call, one per round)."""
    wall = interleaved(candidates, rounds=args.rounds, reps=args.reps)
    timed = {name: gpu_and_host(fn, queue, cycles_per_ms) for name, fn in candidates.items()}
    for name, row in timed.items():
        row["wall_ms"] = statistics.median(wall[name])
    return timed, wall


def _cudagraph_skips() -> int:
    """How many times Inductor declined to record a CUDA graph so far (0: every graphed call replays)."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds of the wall-time loop")
    parser.add_argument("--reps", type=int, default=5, help="synchronised calls per candidate per round")
    parser.add_argument(
        "--queue", type=int, default=50, help="calls queued behind the spin for GPU/host time"
    )
    parser.add_argument(
        "--step-queue", type=int, default=3, help="training steps queued (hundreds of launches each)"
    )
    parser.add_argument("--no-steps", action="store_true", help="skip the ResNet-18 training-step table")
    parser.add_argument("--json", type=Path, help="write every figure, as JSON, to this file")
    parser.add_argument("--markdown", type=Path, help="also write the tables, as markdown, to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            "op_gpu.py: error: needs a CUDA GPU (torch.cuda.is_available() is False); "
            "for CPU timings run benchmarks/op.py",
            file=sys.stderr,
        )
        sys.exit(2)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print(
            "op_gpu.py: error: unset TRITON_INTERPRET: the interpreter is for correctness tests, not timings",
            file=sys.stderr,
        )
        sys.exit(2)
    torch.backends.cudnn.benchmark = True
    cycles_per_ms = _cycles_per_ms()
    report: dict = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "layers": [],
        "steps": [],
        "notes": [],
    }
    lines = [
        f"Device: {report['device']}; torch {torch.__version__}; bf16, channels_last, k={K}, n={N}, "
        f"fwd+bwd. GPU/host: {args.queue} calls queued behind a spin; wall: medians of {args.rounds} "
        f"interleaved rounds x {args.reps} synchronised calls.",
        "",
    ]
    lines += [
        "| layer | batch | candidate | GPU ms | host ms | wall ms | GPU: masked / this | "
        "wall: masked / this | wall: 3x3 / this |",
        "|" + "---|" * 9,
    ]
    goals = []
    for shape in SHAPES:
        for batch in args.batches:
            candidates, note = layer_candidates(shape, batch)
            if note and note not in report["notes"]:
                report["notes"].append(note)
            timed, wall = _measure(candidates, args, cycles_per_ms, args.queue)
            for name, row in timed.items():
                row["gpu_vs_masked"] = timed[MASKED]["gpu_ms"] / row["gpu_ms"]
                row["wall_vs_masked"] = median_ratio(wall, MASKED, name)
                row["wall_vs_conv3"] = median_ratio(wall, CONV3, name)
                lines.append(
                    f"| {shape.name} | {batch} | {name}{'' if row['ahead'] else ' (host not ahead)'} | "
                    f"{row['gpu_ms']:.3f} | {row['host_ms']:.3f} | {row['wall_ms']:.3f} | "
                    f"{row['gpu_vs_masked']:.2f}x | {row['wall_vs_masked']:.2f}x | "
                    f"{row['wall_vs_conv3']:.2f}x |"
                )
                print(lines[-1], flush=True)
            report["layers"].append({"layer": shape.name, "batch": batch, "candidates": timed})
            where = f"{shape.name} b{batch}"
            for name in (DCS_EAGER, DCS_COMPILED, DCS_GRAPHED):
                ratio = timed[name]["gpu_vs_masked"]
                goals.append(
                    (
                        f"{where}: {name} >= {MASKED_GPU_GOAL}x masked dense in GPU time ({ratio:.2f}x)",
                        ratio >= MASKED_GPU_GOAL,
                    )
                )
            eager = timed[DCS_EAGER]
            if batch == 512:
                goals.append(
                    (
                        f"{where}: eager DCS >= {MASKED_WALL_GOAL}x masked dense in wall time "
                        f"({eager['wall_vs_masked']:.2f}x)",
                        eager["wall_vs_masked"] >= MASKED_WALL_GOAL,
                    )
                )
            goals.append(
                (
                    f"{where}: eager DCS no slower than the 3x3 conv in wall time "
                    f"({eager['wall_vs_conv3']:.2f}x)",
                    eager["wall_vs_conv3"] >= CONV3_GOAL,
                )
            )
    lines += [""] + [f"- {note}" for note in report["notes"]]
    if not args.no_steps:
        lines += [
            "",
            "| training step (ResNet-18, CIFAR, bf16) | batch | GPU ms | host ms | wall ms | "
            "wall: DCS / plain |",
            "|---|---|---|---|---|---|",
        ]
        for batch in args.batches:
            timed, wall = _measure(training_step_candidates(batch), args, cycles_per_ms, args.step_queue)
            for mode in MODES:
                ratio = median_ratio(wall, f"{mode} DCS", f"{mode} plain")
                for kind in ("plain", "DCS"):
                    row = timed[f"{mode} {kind}"]
                    lines.append(
                        f"| {mode} {kind} | {batch} | {row['gpu_ms']:.2f} | {row['host_ms']:.2f} | "
                        f"{row['wall_ms']:.2f} | {ratio if kind == 'DCS' else 1.0:.3f} |"
                    )
                    print(lines[-1], flush=True)
                goals.append(
                    (
                        f"training step b{batch}, {mode}: <= {STEP_GOAL}x plain ({ratio:.3f}x)",
                        ratio <= STEP_GOAL,
                    )
                )
                report["steps"].append(
                    {
                        "batch": batch,
                        "mode": mode,
                        "ratio": ratio,
                        "plain": timed[f"{mode} plain"],
                        "dcs": timed[f"{mode} DCS"],
                    }
                )
    report["cudagraph_skips"] = _cudagraph_skips()
    report["goals"] = [{"goal": what, "met": ok} for what, ok in goals]
    lines += ["", f"CUDA graphs skipped by Inductor: {report['cudagraph_skips']}", "", "Goals:"]
    lines += [f"- {'PASS' if ok else 'MISS'}: {what}" for what, ok in goals]
    text = "\n".join(lines)
    print("\n" + text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
