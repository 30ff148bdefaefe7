"""Argument checks shared by the pass, the plan, instrumentation and the layer.

Each raises one of our errors naming the bad value and the fix, so every entry point reports the same
mistake the same way.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from .errors import ConfigError, ModelError

__all__ = ["check_k", "check_model", "check_n", "positive_int"]


def positive_int(value: object, name: str, meaning: str = "") -> int:
    """``value`` if it is an int >= 1 (a bool is not); else ``ConfigError`` naming ``name``.

    ``meaning`` is appended to the message, e.g. ``" (taps per forward)"``.
    """
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive int{meaning}, got {value!r}")
    return value


def check_n(n: object, k: int | None = None, layer: str = "") -> int:
    """``n`` if it is a valid tap count: a positive int, and at most k*k when ``k`` is given.

    ``layer`` (a qualified name) prefixes the message when the check is about one layer.
    """
    where = f"layer {layer!r}: " if layer else ""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"{where}n must be a positive int (taps per forward), got n={n!r}")
    if k is not None and n > k * k:
        raise ConfigError(
            f"{where}n={n} exceeds the k*k={k * k} taps of a {k}x{k} kernel; use n <= {k * k} or a larger k"
        )
    return n


def check_k(k: object) -> int | None:
    """``k`` if it is a DCS kernel size the pass accepts: a positive int, or None (``max(5, original)``)."""
    if k is None:
        return None
    return positive_int(k, "k", " or None (None means max(5, original kernel))")


def check_model(model: object, caller: str) -> nn.Module:
    """``model`` if it is an ``nn.Module``; else ``ModelError`` saying what was passed and how to fix it.

    ``caller`` names the function in the message (``"dcspass.transform"``).
    """
    if isinstance(model, nn.Module):
        return model
    what = type(model).__name__
    if isinstance(model, Mapping):
        hint = (
            f"got a mapping ({what}), which looks like a state dict; build the model first and load the "
            f"weights into it (model = MyNet(); model.load_state_dict(state_dict)), then call "
            f"{caller}(model, ...)"
        )
    elif isinstance(model, type) and issubclass(model, nn.Module):
        hint = f"got the class {model.__name__}; pass an instance: {caller}({model.__name__}(...), ...)"
    elif isinstance(model, str):
        hint = (
            f"got the string {model!r}; build the model first, e.g. "
            f"{caller}(torchvision.models.get_model({model!r}), ...)"
        )
    elif callable(model):
        name = getattr(model, "__name__", what)
        hint = f"got the callable {name}; call it to build the model: {caller}({name}(), ...)"
    else:
        hint = "got None" if model is None else f"got an object of type {what}"
    raise ModelError(f"{caller} needs the model as an nn.Module instance; {hint}")
