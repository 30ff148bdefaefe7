"""Shared test setup. Triton's interpreter must be chosen before Triton is imported anywhere.

With a CUDA device a plain ``pytest`` runs the real kernels (the interpreter-only tests skip, the
``gpu`` tests run); without one, Triton's interpreter runs the kernels on CPU tensors. An explicit
``TRITON_INTERPRET`` in the environment always wins.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch  # importing torch does not import Triton; Triton reads TRITON_INTERPRET when it is imported

os.environ.setdefault("TRITON_INTERPRET", "0" if torch.cuda.is_available() else "1")

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "dcspass",
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dcspass"))


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread: tiny training networks are faster so, and a busy machine's
    oversubscription (2 threads each for several processes on 2 cores) cannot slow them tenfold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CIFAR10_ROOT = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="session")
def cifar10_root() -> Path:
    """The repository's ``data/`` folder with CIFAR-10's binary release, as the setup step fetches it.

    Skipped where it was never fetched, except under CI (``CI`` set), whose setup always fetches it:
    there a missing release fails the test instead of hiding behind a skip.
    """
    if not (CIFAR10_ROOT / "cifar-10-batches-bin").is_dir():
        message = "CIFAR-10 not fetched: run `python -m dcspass data fetch cifar10`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CIFAR10_ROOT
