"""``python -m dcspass.plan MODEL [--policy ...]``: print what ``dcspass.transform`` would do.

MODEL is ``torchvision:<name>`` (e.g. ``torchvision:resnet18``), ``timm:<name>`` or
``package.module:factory`` (a callable returning an ``nn.Module``); models are built without
pretrained weights. ``dcspass.plan`` the function lives in ``dcspass.planning``; importing this module
keeps ``dcspass.plan(...)`` callable.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import types
from collections.abc import Sequence

from torch import nn

from .errors import ConfigError, DCSError
from .planning import plan as _plan

__all__ = ["build_model", "main"]


def build_model(spec: str) -> nn.Module:
    """``torchvision:resnet18`` / ``timm:resnet18`` / ``pkg.module:factory`` -> the model (no weights)."""
    source, sep, name = spec.partition(":")
    if not sep or not name:
        raise ConfigError(
            f"model {spec!r}: expected torchvision:<name>, timm:<name> or package.module:factory"
        )
    if source == "torchvision":
        import torchvision

        return torchvision.models.get_model(name, weights=None)
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=False)
    factory = getattr(importlib.import_module(source), name)
    return factory()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dcspass.plan", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="torchvision:<name>, timm:<name> or package.module:factory")
    parser.add_argument(
        "--policy", default="downsample", help="downsample, index:6, name:<glob> (default: %(default)s)"
    )
    parser.add_argument("--n", type=int, default=2, help="taps per forward (default: %(default)s)")
    parser.add_argument("--k", type=int, default=None, help="DCS kernel size (default: max(5, original))")
    parser.add_argument("--eps-c", type=float, default=0.5, help="Eq. 12 eps_c (default: %(default)s)")
    parser.add_argument(
        "--eps-l", type=float, default=0.25, help="Eq. 12 per-pixel eps_l (default: %(default)s)"
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")
    parser.add_argument("--draw", metavar="PNG", help="also draw the dataflow graph to this file")
    args = parser.parse_args(argv)
    try:
        result = _plan(build_model(args.model), args.policy, n=args.n, k=args.k, eps_c=args.eps_c,
                       eps_l=args.eps_l)
    except DCSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict(), indent=1) if args.json else result)
    if args.draw:
        result.draw(args.draw)
        print(f"graph drawn to {args.draw}")
    return 0


class _CallableModule(types.ModuleType):
    """Importing ``dcspass.plan`` rebinds the package attribute to this module; keep it callable."""

    def __call__(self, *args, **kwargs):
        return _plan(*args, **kwargs)


if __name__ == "__main__":
    sys.exit(main())
else:
    sys.modules[__name__].__class__ = _CallableModule
