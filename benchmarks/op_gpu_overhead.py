"""Where the time of one DCS layer's fwd+bwd goes on a GPU: kernels, launch and dispatch overhead.

``benchmarks/op_gpu.py`` times whole calls. When a DCS call costs about the same at batch 128 and
512, the kernels are not what costs: this script splits one call of the RN18 ``layer2.0.conv1`` DCS
layer (bf16, channels_last, k=5, n=2) into its layers of software, each timed on its own:

- ``launcher fwd``: ``kernels.triton_forward.dcs_forward`` called directly (tap draw excluded), the
  kernel launched as a plain Triton call (what eager calls do) or through ``wrap_triton`` (what the
  ``triton_op`` bodies do, for torch.compile);
- ``op fwd`` / ``op grad-input`` / ``op grad-weight``: the public ops ``torch.ops.dcspass.*``
  (custom-op dispatch + backend routing + launcher);
- ``layer fwd``: ``DCSConv2d.forward`` (tap draw + shape checks + op);
- ``layer fwd+bwd``: what ``op_gpu.py`` times.

Each row gives the GPU time per call (CUDA events around ``--reps`` calls) and the host time per call
(wall clock of issuing the calls, no sync inside), so a host-bound row shows host >= GPU. Then
``torch.profiler`` lists the ops with the most host time and the kernels with the most GPU time.

Run: ``python benchmarks/op_gpu_overhead.py [--batch 128] [--reps 50]``. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import time

import torch

import dcspass
from dcspass.kernels import triton_forward

K, N = 5, 2


def timed(fn, reps: int) -> tuple[float, float]:
    """(GPU ms per call, host ms per call) over ``reps`` calls after a warm-up."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    host = (time.perf_counter() - t0) * 1e3 / reps
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop) / reps, host


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=50)
    args = p.parse_args()
    dev, dtype = "cuda", torch.bfloat16
    layer = dcspass.DCSConv2d(64, 128, K, N, stride=2, padding=K // 2, bias=False).to(dev, dtype)
    x = torch.randn(args.batch, 64, 32, 32, device=dev, dtype=dtype).to(memory_format=torch.channels_last)
    xg = x.detach().clone().requires_grad_()
    taps = layer.draw_taps()
    geometry = ([2, 2], [2, 2, 2, 2], [1, 1], 1)

    def launcher(traceable: bool):
        return lambda: triton_forward.dcs_forward(
            x, layer.weight, None, taps, (2, 2), (2, 2, 2, 2), (1, 1), 1, traceable=traceable
        )

    def op():
        torch.ops.dcspass.dcs_conv2d(x, layer.weight, None, taps, *geometry)

    grad_out = torch.ones_like(layer(x))

    def op_grad_input():
        torch.ops.dcspass.dcs_conv2d_grad_input(grad_out, list(x.shape), True, layer.weight, taps, *geometry)

    def op_grad_weight():
        torch.ops.dcspass.dcs_conv2d_grad_weight(grad_out, x, list(layer.weight.shape), taps, *geometry)

    def draw():
        layer.draw_taps()

    def fwd():
        with torch.no_grad():
            layer(x)

    def fwd_bwd():
        layer(xg).sum().backward()

    conv = torch.nn.Conv2d(64, 128, 3, stride=2, padding=1, bias=False).to(dev, dtype)
    conv = conv.to(memory_format=torch.channels_last)

    def conv3():
        conv(xg).sum().backward()

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, batch {args.batch}")
    print(f"{'what':28s} {'GPU ms/call':>12s} {'host ms/call':>13s}")
    for name, fn in (
        ("tap draw", draw),
        ("launcher fwd (direct)", launcher(False)),
        ("launcher fwd (wrap_triton)", launcher(True)),
        ("op fwd", op),
        ("op grad-input", op_grad_input),
        ("op grad-weight", op_grad_weight),
        ("layer fwd", fwd),
        ("layer fwd+bwd", fwd_bwd),
        ("3x3 conv fwd+bwd", conv3),
    ):
        gpu, host = timed(fn, args.reps)
        print(f"{name:28s} {gpu:12.3f} {host:13.3f}")

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            fwd_bwd()
        torch.cuda.synchronize()
    averages = prof.key_averages()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
    print(averages.table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
