"""dcspass's exception types.

Every error the library raises on bad input is one of these, so callers can catch ``dcspass.DCSError``
and tests can check type and message. Each subclasses the built-in it refines (``ValueError`` and
friends), so code written against plain PyTorch conventions keeps working.
"""

from __future__ import annotations

__all__ = [
    "BoundError",
    "CheckpointError",
    "ConfigError",
    "DCSError",
    "DataError",
    "EvaluationError",
    "ModelError",
    "PolicyError",
    "TapError",
]


class DCSError(Exception):
    """Base class of every error raised by dcspass."""


class TapError(DCSError, ValueError):
    """Bad taps: duplicates, out of range, wrong dtype, or too few left after an exclusion."""


class ConfigError(DCSError, ValueError):
    """A bad argument to a layer, op or recipe (n, kernel size, padding, flags...)."""


class ModelError(DCSError, TypeError):
    """Something that is not an ``nn.Module`` where a model is expected (a function, a state dict, ...)."""


class PolicyError(DCSError, ValueError):
    """A layer-selection policy that does not parse or selects nothing."""


class BoundError(DCSError, ValueError):
    """A selected layer whose n lies outside the Eq. 12 interval."""


class CheckpointError(DCSError, ValueError):
    """A checkpoint that is missing, corrupt, or belongs to another model or class count."""


class DataError(DCSError, FileNotFoundError):
    """A data folder that is missing or does not have the expected layout."""


class EvaluationError(DCSError, ValueError):
    """A bad evaluation request (eps on the 0-255 scale, an empty loader, ...)."""
