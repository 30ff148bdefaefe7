"""fwd+bwd of DCSConv2d vs the masked dense k x k conv vs the 3x3 conv it replaces (CPU).

Shapes (batch 64 unless ``--batch``; k = 5):

- ``rn18``: CIFAR ResNet-18 ``layer2.0.conv1`` (64 -> 128, 32x32, stride 2), n = 2: the main goal.
- ``rn18-n4``: the same layer with n = 4.
- ``rn18-s1``: ResNet-18 ``layer1.0.conv1`` (64 -> 64, 32x32, stride 1), n = 2: the paper's placement.
- ``wrn``: WRN-34-10 ``block2.layer.0.conv1`` (160 -> 320, 32x32, stride 2), n = 2.
- ``rn50``: ResNet-50 ``layer2.0.conv2`` (128 -> 128, 32x32, stride 2), n = 2.
- ``rn18-l3``, ``rn18-l4``: CIFAR ResNet-18 ``layer3.0.conv1`` (128 -> 256, 16x16) and ``layer4.0.conv1``
  (256 -> 512, 8x8), stride 2, n = 2: the deeper layers of the ``downsample`` policy (not in the
  default set, which is the goals' shapes).

Each candidate runs forward and ``torch.autograd.grad`` of a fixed random ``grad_out`` with respect to
the input and the weight (no ``.grad`` accumulation, which is no part of a layer's cost), in NCHW and
in channels_last; ``--grads input`` asks for the input's gradient alone, as every attack step does
(each candidate then skips its weight-gradient pass). A fourth row, the GEMM floor, runs the DCS
layer's GEMMs alone (forward, grad-input and, unless ``--grads input``, grad-weight) on warm,
preallocated operands and outputs: no gather, no scatter, no allocation, no autograd. Its ratio against
the masked dense conv is the ceiling of this design (one GEMM per pass) on the machine at hand; the DCS
row's distance to it is what data movement, memory allocation and dispatch cost. Candidates run
interleaved (``_timing.compare``); ratios are medians of per-round ratios. Beside them: the DCS layer's
achieved GFLOP/s (its GEMMs, ``2*M*N*K`` each) and, from ``torch.profiler`` over a few calls, the share
of its time in GEMMs, in data movement (copies, fills, adds, index ops) and in the rest. The header
names the malloc the process runs on (a preloaded jemalloc or tcmalloc, or the C library's with any
``MALLOC_*`` tunables): it moves every candidate's time, the DCS layer's most (docs/performance.md).

Run: ``python benchmarks/op.py [--threads N] [--rounds R] [--shapes rn18,wrn] [--grads input]``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import compare, print_table

import dcspass

K = 5
GEMM_OPS = {"aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm"}
MOVE_OPS = {"aten::copy_", "aten::fill_", "aten::add_", "aten::addcmul_", "aten::index_select"}
MOVE_OPS |= {"aten::index_copy_", "aten::sum", "aten::cat", "aten::clone", "aten::contiguous"}
PROFILED_CALLS = 5
PRELOADED_MALLOC = re.compile(r"lib(?:jemalloc|tcmalloc\w*|mimalloc)[\w.]*\.so[\w.]*")


@dataclass(frozen=True)
class Shape:
    name: str
    c_in: int
    c_out: int
    hw: int
    stride: int
    n: int


SHAPES = {
    "rn18": Shape("ResNet-18 layer2.0.conv1", 64, 128, 32, 2, 2),
    "rn18-n4": Shape("ResNet-18 layer2.0.conv1, n=4", 64, 128, 32, 2, 4),
    "rn18-s1": Shape("ResNet-18 layer1.0.conv1 (stride 1)", 64, 64, 32, 1, 2),
    "wrn": Shape("WRN-34-10 block2.layer.0.conv1", 160, 320, 32, 2, 2),
    "rn50": Shape("ResNet-50 layer2.0.conv2", 128, 128, 32, 2, 2),
    "rn18-l3": Shape("ResNet-18 layer3.0.conv1", 128, 256, 16, 2, 2),
    "rn18-l4": Shape("ResNet-18 layer4.0.conv1", 256, 512, 8, 2, 2),
}
DEFAULT_SHAPES = ("rn18", "rn18-n4", "rn18-s1", "wrn", "rn50")
DCS = "DCSConv2d"
MASKED = "masked dense 5x5 conv"
CONV3 = "3x3 conv (replaced)"
FLOOR = "GEMM floor (DCS's GEMMs alone)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--shapes", default=",".join(DEFAULT_SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}"
    )
    parser.add_argument(
        "--grads",
        choices=("input+weight", "input"),
        default="input+weight",
        help="the gradients each backward computes: a training step's, or an attack step's (input only)",
    )
    args = parser.parse_args()
    keys = args.shapes.split(",")
    unknown = [key for key in keys if key not in SHAPES]
    if unknown or args.batch < 1 or args.threads < 1 or args.rounds < 1:
        parser.error(f"unknown shape {unknown}" if unknown else "--batch, --threads, --rounds must be >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} thread{'s' * (threads != 1)}, batch {args.batch}, k={K}")
    print(f"allocator: {allocator()}")
    print(f"backward: the gradients of the {args.grads.replace('+', ' and the ')}")
    with_weight = args.grads == "input+weight"
    for key in keys:
        for fmt_name, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
            run_shape(SHAPES[key], args.batch, fmt_name, fmt, args.rounds, with_weight)


def allocator() -> str:
    """The malloc this process runs on, which moves every candidate's time: a preloaded jemalloc,
    tcmalloc or mimalloc if one is mapped, else the C library's, with any glibc tunables set."""
    try:
        with open("/proc/self/maps") as maps:
            mapped = sorted(set(PRELOADED_MALLOC.findall(maps.read())))
    except OSError:  # not Linux
        mapped = []
    if mapped:
        return ", ".join(mapped)
    tunables = [f"{key}={value}" for key, value in sorted(os.environ.items()) if key.startswith("MALLOC_")]
    if os.environ.get("GLIBC_TUNABLES"):
        tunables.append(f"GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']}")
    return "the C library's malloc" + (f" ({' '.join(tunables)})" if tunables else ", default settings")


def run_shape(
    shape: Shape, batch: int, fmt_name: str, fmt: torch.memory_format, rounds: int, with_weight: bool
) -> None:
    x = torch.randn(batch, shape.c_in, shape.hw, shape.hw).to(memory_format=fmt).requires_grad_()
    fns = candidates(x, shape, with_weight)
    result = compare(fns, baseline=MASKED, rounds=rounds)
    conv3 = result[CONV3]["median_s"]
    for row in result.values():
        row["speedup_vs_3x3"] = conv3 / row["median_s"]
    hw_out = (shape.hw - 1) // shape.stride + 1
    gemms = 3 if with_weight else 2
    gemm_flop = gemms * 2 * (batch * hw_out * hw_out) * shape.c_out * (shape.n * shape.c_in)
    dcs_s = result[DCS]["median_s"]
    print_table(
        f"fwd+bwd{'' if with_weight else ' (input gradient only)'}, {shape.name}: {shape.c_in} -> "
        f"{shape.c_out}, {shape.hw}x{shape.hw}, stride {shape.stride}, n={shape.n}, {fmt_name} input",
        result,
    )
    shares = time_shares(fns[DCS])
    floor_s = result[FLOOR]["median_s"]
    print(
        f"DCS: {gemm_flop / dcs_s / 1e9:.1f} GFLOP/s over its {gemms} GEMMs ({gemm_flop / 1e9:.2f} GFLOP; "
        f"the GEMMs alone run at {gemm_flop / floor_s / 1e9:.1f}); "
        f"FLOP limit vs masked dense {K * K / shape.n:.1f}x; "
        f"DCS takes {dcs_s / floor_s:.2f}x its GEMM floor; time in GEMMs {shares['gemm']:.0%}, "
        f"data movement {shares['move']:.0%}, other {shares['other']:.0%} (profiler, self CPU time)"
    )


def candidates(x: torch.Tensor, shape: Shape, with_weight: bool) -> dict:
    """fwd+bwd closures: the DCS layer, the masked dense k x k conv, and the 3x3 conv DCS replaces; each
    backward asks for the input's gradient, and the weight's when ``with_weight``."""
    c_in, c_out, stride, n = shape.c_in, shape.c_out, shape.stride, shape.n
    dcs = dcspass.DCSConv2d(c_in, c_out, K, n, stride=stride, padding=K // 2, bias=False)
    dense3 = torch.nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
    w_dense = dcs.weight.detach().clone().requires_grad_()
    hw_out = (shape.hw - 1) // stride + 1
    grad_out = torch.randn(x.shape[0], c_out, hw_out, hw_out).to(memory_format=_format(x))

    def wrt(weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (x, weight) if with_weight else (x,)

    def run_dcs():
        torch.autograd.grad(dcs(x), wrt(dcs.weight), grad_out)

    def run_masked():
        mask = torch.zeros(K * K).index_fill_(0, dcs.draw_taps(), 1.0).view(K, K)
        torch.autograd.grad(F.conv2d(x, w_dense * mask, None, stride, K // 2), wrt(w_dense), grad_out)

    def run_conv3():
        torch.autograd.grad(dense3(x), wrt(dense3.weight), grad_out)

    # A DCS fwd+bwd's GEMMs ([M, n*C_in] x [n*C_in, C_out] and its transposes) and nothing else.
    m, kn = x.shape[0] * hw_out * hw_out, n * c_in
    cols, w_taps, g = torch.randn(m, kn), torch.randn(kn, c_out), torch.randn(m, c_out)
    out, grad_cols, grad_w = torch.empty(m, c_out), torch.empty(m, kn), torch.empty(kn, c_out)

    def run_floor():
        torch.mm(cols, w_taps, out=out)
        torch.mm(g, w_taps.t(), out=grad_cols)
        if with_weight:
            torch.mm(cols.t(), g, out=grad_w)

    return {MASKED: run_masked, CONV3: run_conv3, DCS: run_dcs, FLOOR: run_floor}


def _format(x: torch.Tensor) -> torch.memory_format:
    return torch.contiguous_format if x.is_contiguous() else torch.channels_last


def time_shares(fn) -> dict[str, float]:
    """Shares of self CPU time in GEMMs, data movement and the rest, over ``PROFILED_CALLS`` calls."""
    fn()
    with profile() as prof:
        for _ in range(PROFILED_CALLS):
            fn()
    totals = {"gemm": 0.0, "move": 0.0, "other": 0.0}
    for event in prof.key_averages():
        kind = "gemm" if event.key in GEMM_OPS else "move" if event.key in MOVE_OPS else "other"
        totals[kind] += event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {kind: t / whole for kind, t in totals.items()}


if __name__ == "__main__":
    main()
