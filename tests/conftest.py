"""Shared test setup. Triton's interpreter must be chosen before Triton is imported anywhere."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
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
