"""The GPU benchmark and the device script refuse a machine without CUDA in one line, before any work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")


def _run(command: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )


def test_op_gpu_without_cuda_exits_2_with_one_line():
    result = _run([sys.executable, "benchmarks/op_gpu.py", "--batches", "128"])
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "needs a CUDA GPU" in result.stderr
    assert _run([sys.executable, "benchmarks/op_gpu.py", "--help"]).returncode == 0


def test_device_check_without_cuda_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    result = _run(["bash", "benchmarks/device_check.sh"], OUT=str(out), PYTHON=sys.executable)
    assert result.returncode == 2 and "no CUDA device" in result.stderr and result.stderr.count("\n") == 1
    assert not any(out.iterdir())  # the folder is made, nothing is run
