"""fwd+bwd of DCSConv2d vs the masked dense k x k conv vs the 3x3 conv it replaces (CPU).

Shape: CIFAR ResNet-18 ``layer2.0.conv1`` (batch 64, 64 -> 128 channels, 32x32, stride 2), k=5, n=2.
Run: ``python benchmarks/op.py [--threads N] [--channels-last]``. Prints speedups measured side by side.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import compare, print_table

import dcspass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b, c_in, c_out, hw, stride, k, n = args.batch, 64, 128, 32, 2, 5, 2
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, x [{b}, {c_in}, {hw}, {hw}] -> "
        f"{c_out} channels, stride {stride}, k={k}, n={n}"
    )

    for fmt_name, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        x = torch.randn(b, c_in, hw, hw).to(memory_format=fmt).requires_grad_()
        result = compare(
            candidates(x, c_in, c_out, stride, k, n), baseline="masked dense 5x5 conv", rounds=args.rounds
        )
        conv3 = result["3x3 conv (replaced)"]["median_s"]
        for row in result.values():
            row["speedup_vs_3x3"] = conv3 / row["median_s"]
        print_table(f"fwd+bwd, {fmt_name} input", result)


def candidates(x: torch.Tensor, c_in: int, c_out: int, stride: int, k: int, n: int) -> dict:
    """fwd+bwd closures: the DCS layer, the masked dense k x k conv, and the 3x3 conv DCS replaces."""
    dcs = dcspass.DCSConv2d(c_in, c_out, k, n, stride=stride, padding=k // 2, bias=False)
    dense3 = torch.nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
    w_dense = dcs.weight.detach().clone().requires_grad_()

    def run_dcs():
        dcs(x).sum().backward()

    def run_masked():
        mask = torch.zeros(k * k).index_fill_(0, dcs.draw_taps(), 1.0).view(k, k)
        F.conv2d(x, w_dense * mask, None, stride, k // 2).sum().backward()

    def run_conv3():
        dense3(x).sum().backward()

    return {
        "masked dense 5x5 conv": run_masked,
        "3x3 conv (replaced)": run_conv3,
        "DCSConv2d k=5 n=2": run_dcs,
    }


if __name__ == "__main__":
    main()
