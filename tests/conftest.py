"""Shared test setup. Triton's interpreter must be chosen before Triton is imported anywhere.

With a CUDA device a plain ``pytest`` runs the real kernels (the interpreter-only tests skip, the
``gpu`` tests run); without one, Triton's interpreter runs the kernels on CPU tensors. An explicit
``TRITON_INTERPRET`` in the environment always wins.
"""

from __future__ import annotations

import os

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
