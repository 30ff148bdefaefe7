"""dcspass: Deformable Convolution with Stochasticity as a graph pass.

The data path, in the order a model travels it:
    policy selects convs -> Eq. 12 bound check -> rewrite (``transform``) -> ``DCSConv2d``
    -> ``dcs_conv2d`` op (``torch.ops.dcspass``, ``dcspass.kernels``) -> Triton on CUDA / PyTorch on CPU.

``import dcspass`` loads that path only (torch and torch.fx). The rest loads on first use (PEP 562
module ``__getattr__``): ``plan`` / ``Plan`` (networkx), ``evaluate`` / ``Report`` (the evaluation
engine, torchattacks), ``build_model`` (torchvision models), ``load_dataset`` (torchvision datasets),
and the subpackages ``training``, ``evaluation``, ``models``, ``data``, ``planning``; ``__version__``
reads the installed distribution's metadata.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

from . import bounds, policies
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
from .functional import dcs_conv2d
from .instrumentation import instrument
from .layers import DCSConv2d, DCSConv2dSame
from .sampling import dcs_layers, excluding_taps, frozen_taps, using_taps
from .taps import sample_taps
from .transformation import transform

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and IDEs
    from .data import load_dataset
    from .evaluation import Report, evaluate
    from .models import build_model
    from .planning import Plan, plan

__version__: str  # the installed distribution's version, read on first use (see __getattr__)
# ``__version__`` when dcspass runs from a source tree that was never installed (no metadata to read).
_UNKNOWN_VERSION = "0+unknown"

# Public names that live in a heavy module: name -> the submodule that defines it.
_LAZY_NAMES = {
    "Plan": "planning",
    "Report": "evaluation",
    "build_model": "models",
    "evaluate": "evaluation",
    "load_dataset": "data",
    "plan": "planning",
}
_LAZY_SUBMODULES = ("data", "evaluation", "models", "planning", "training")


def __getattr__(name: str) -> Any:
    if name == "__version__":
        # The installed distribution's version; read on first use (importlib.metadata is not free).
        from .provenance import distribution_version

        value = distribution_version("dcspass") or _UNKNOWN_VERSION
    elif name in _LAZY_NAMES:
        value = getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    elif name in _LAZY_SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    # The public names and dcspass's own submodules; not the helpers this file imports (importlib, Any).
    submodules = {
        n for n, v in globals().items() if isinstance(v, ModuleType) and v.__name__.startswith(f"{__name__}.")
    }
    return sorted(set(__all__) | set(_LAZY_SUBMODULES) | submodules | {"__version__"})


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
