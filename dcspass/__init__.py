"""dcspass: Deformable Convolution with Stochasticity as a graph pass.

The data path, in the order a model travels it:
    policy selects convs -> Eq. 12 bound check -> rewrite (``transform``) -> ``DCSConv2d``
    -> ``dcs_conv2d`` op (``torch.ops.dcspass``, ``kernels/``) -> Triton on CUDA / PyTorch on CPU.
"""

from __future__ import annotations

from . import bounds, policies
from .data import load_dataset
from .errors import (
    BoundError,
    CheckpointError,
    ConfigError,
    DataError,
    DCSError,
    EvaluationError,
    ModelError,
    PolicyError,
    TapError,
)
from .evaluation import Report, evaluate
from .functional import dcs_conv2d
from .instrumentation import instrument
from .layers import DCSConv2d, DCSConv2dSame
from .models import build_model
from .planning import Plan, plan
from .sampling import dcs_layers, excluding_taps, frozen_taps, sample_taps, using_taps
from .transformation import transform

__version__ = "0.1.0"

__all__ = [
    "BoundError",
    "CheckpointError",
    "ConfigError",
    "DCSConv2d",
    "DCSConv2dSame",
    "DCSError",
    "DataError",
    "EvaluationError",
    "ModelError",
    "Plan",
    "PolicyError",
    "Report",
    "TapError",
    "bounds",
    "build_model",
    "dcs_conv2d",
    "dcs_layers",
    "evaluate",
    "excluding_taps",
    "frozen_taps",
    "instrument",
    "load_dataset",
    "plan",
    "policies",
    "sample_taps",
    "transform",
    "using_taps",
]
