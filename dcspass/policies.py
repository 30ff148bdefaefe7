"""Layer-selection policies: which convs of a model become DCS layers.

A policy sees every conv of the model as a ``ConvSite`` (1-based execution index, qualified name,
kernel, stride, ...) and answers yes or no. Spellings:

- ``"downsample"``: stride > 1 along both axes and spatial kernel > 1 (1x1 projections excluded);
  the stride Eq. 12 checks is the smaller one (``dcspass.bounds.effective_stride``), so a (2, 1)
  stride counts as 1 in both places.
- ``"index:6"``, ``"index:2,6"``: the 6th (2nd and 6th) conv in execution order, 1-based as the paper
  counts layers (on torchvision's ResNet-18, index 6 is ``layer2.0.conv1``).
- ``"name:layer*.0.conv1"``: shell-style globs on qualified names (several separated by commas).
- a callable ``(qualified_name, conv) -> bool``; ``conv`` is the ``nn.Conv2d`` (or, for an
  ``F.conv2d`` call site, its ``ConvSite``, which has the same attributes).
- ``Policy`` objects, which compose: ``Downsample() | Index(2)``, ``Name("layer4*") & ~Index(17)``.

Convs that cannot be converted without changing what they compute (a subclass whose forward changes
the weight, such as timm's ``StdConv2d``; a torch.ao quantized conv) are never selected, whatever the
policy says. DCS layers keep their index (a transformed model numbers its convs as the original did);
a policy that selects one raises ``PolicyError``: a conv is transformed once.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .bounds import effective_stride
from .errors import PolicyError

__all__ = [
    "AllOf",
    "AnyOf",
    "ConvSite",
    "Downsample",
    "Index",
    "Name",
    "Not",
    "Policy",
    "PolicySpec",
    "Where",
    "as_policy",
    "format_sites",
    "select",
]


@dataclass
class ConvSite:
    """One convolution of a model, as the pass and the policies see it.

    Attributes mirror ``nn.Conv2d`` (``kernel_size``, ``stride``, ``dilation`` are pairs; ``padding`` is
    the conv's own value: a pair, a 4-tuple ``(left, right, top, bottom)`` or a string).
    ``module`` is the conv module, or None for an ``F.conv2d`` call site in the graph.
    ``convertible`` is False (with ``reason``) when turning it into DCS would change what it computes,
    and for a layer that is ``already_dcs``.
    """

    index: int
    name: str
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: Any
    dilation: tuple[int, int]
    groups: int
    in_channels: int
    out_channels: int
    padding_mode: str = "zeros"
    tf_same: bool = False
    module: nn.Module | None = field(default=None, repr=False, compare=False)
    node: Any = field(default=None, repr=False, compare=False)
    convertible: bool = True
    reason: str = ""
    already_dcs: bool = False

    @property
    def kind(self) -> str:
        """``type(conv).__name__``, or ``"F.conv2d"`` for a functional call site."""
        return "F.conv2d" if self.module is None else type(self.module).__name__

    @property
    def conv(self) -> Any:
        """What a callable policy receives as its second argument."""
        return self if self.module is None else self.module


class Policy:
    """A selection rule over ``ConvSite``s; compose with ``|``, ``&`` and ``~``."""

    def selects(self, site: ConvSite) -> bool:
        raise NotImplementedError

    def validate(self, sites: Sequence[ConvSite]) -> None:
        """Raise ``PolicyError`` when the policy refers to convs that do not exist."""

    def __or__(self, other: PolicySpec) -> Policy:
        return AnyOf(self, as_policy(other))

    def __ror__(self, other: PolicySpec) -> Policy:
        return AnyOf(as_policy(other), self)

    def __and__(self, other: PolicySpec) -> Policy:
        return AllOf(self, as_policy(other))

    def __rand__(self, other: PolicySpec) -> Policy:
        return AllOf(as_policy(other), self)

    def __invert__(self) -> Policy:
        return Not(self)


class Downsample(Policy):
    """Convs with stride > 1 along both axes and a spatial kernel larger than 1x1.

    The stride is the one Eq. 12 checks (``effective_stride``, the smaller of the two): a (2, 1)
    stride is S=1 there, where the default tolerances admit no n, so it is not selected.
    """

    def selects(self, site: ConvSite) -> bool:
        return effective_stride(site.stride) > 1 and max(site.kernel_size) > 1

    def __repr__(self) -> str:
        return "Downsample()"


class Index(Policy):
    """The convs at these 1-based positions in execution order."""

    def __init__(self, *indices: int) -> None:
        if not indices or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in indices):
            raise PolicyError(f"Index needs 1-based positive int positions, got {indices!r}")
        self.indices = tuple(indices)

    def selects(self, site: ConvSite) -> bool:
        return site.index in self.indices

    def validate(self, sites: Sequence[ConvSite]) -> None:
        missing = [i for i in self.indices if i > len(sites)]
        if missing:
            raise PolicyError(
                f"policy index:{','.join(map(str, self.indices))}: the model has {len(sites)} convs, so "
                f"index {missing} does not exist (indices are 1-based, in execution order).\n"
                + format_sites(sites)
            )

    def __repr__(self) -> str:
        return f"Index({', '.join(map(str, self.indices))})"


class Name(Policy):
    """Convs whose qualified name matches any of the shell-style glob patterns."""

    def __init__(self, *patterns: str) -> None:
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise PolicyError(f"Name needs non-empty glob patterns, got {patterns!r}")
        self.patterns = tuple(patterns)

    def selects(self, site: ConvSite) -> bool:
        return any(fnmatch.fnmatchcase(site.name, p) for p in self.patterns)

    def __repr__(self) -> str:
        return f"Name({', '.join(map(repr, self.patterns))})"


class Where(Policy):
    """A predicate ``(qualified_name, conv) -> bool``."""

    def __init__(self, predicate: Callable[[str, Any], bool]) -> None:
        self.predicate = predicate

    def selects(self, site: ConvSite) -> bool:
        return bool(self.predicate(site.name, site.conv))

    def __repr__(self) -> str:
        return f"Where({getattr(self.predicate, '__name__', repr(self.predicate))})"


class AnyOf(Policy):
    """Selected by at least one of the parts."""

    def __init__(self, *parts: Policy) -> None:
        self.parts = parts

    def selects(self, site: ConvSite) -> bool:
        return any(p.selects(site) for p in self.parts)

    def validate(self, sites: Sequence[ConvSite]) -> None:
        for p in self.parts:
            p.validate(sites)

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.parts))


class AllOf(AnyOf):
    """Selected by every part."""

    def selects(self, site: ConvSite) -> bool:
        return all(p.selects(site) for p in self.parts)

    def __repr__(self) -> str:
        return "(" + " & ".join(map(repr, self.parts)) + ")"


class Not(Policy):
    """Everything the inner policy does not select."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner

    def selects(self, site: ConvSite) -> bool:
        return not self.inner.selects(site)

    def validate(self, sites: Sequence[ConvSite]) -> None:
        self.inner.validate(sites)

    def __repr__(self) -> str:
        return f"~{self.inner!r}"


PolicySpec = str | Policy | Callable[[str, Any], bool]

_SPELLINGS = (
    '"downsample", "index:6", "index:2,6", "name:<glob>", a callable (name, conv) -> bool or a Policy'
)


def as_policy(spec: PolicySpec) -> Policy:
    """Parse a policy spelling (see the module docstring) into a ``Policy``."""
    if isinstance(spec, Policy):
        return spec
    if isinstance(spec, str):
        kind, sep, arg = spec.strip().partition(":")
        if spec.strip() == "downsample":
            return Downsample()
        if kind == "index" and sep:
            try:
                indices = [int(part) for part in arg.split(",")]
            except ValueError:
                raise PolicyError(
                    f"policy {spec!r}: index takes 1-based ints separated by commas, e.g. 'index:6' "
                    "or 'index:2,6'"
                ) from None
            if any(i < 1 for i in indices):
                raise PolicyError(f"policy {spec!r}: indices are 1-based (the first conv is index:1)")
            return Index(*indices)
        if kind == "name" and sep and arg:
            return Name(*(p.strip() for p in arg.split(",") if p.strip()))
        raise PolicyError(f"unknown policy {spec!r}; expected {_SPELLINGS}")
    if callable(spec):
        return Where(spec)
    raise PolicyError(f"unknown policy {spec!r} of type {type(spec).__name__}; expected {_SPELLINGS}")


def format_sites(sites: Sequence[ConvSite]) -> str:
    """The convs of a model as a small table (index, name, kernel, stride), for error messages."""
    if not sites:
        return "The model has no Conv2d layers and no F.conv2d call sites."
    width = max(len(s.name) for s in sites)
    lines = [f"Convs in execution order:\n  {'index':>5}  {'name':<{width}}  kernel  stride"]
    for s in sites:
        note = ""
        if not s.convertible:
            note = f"  {s.reason}" if s.already_dcs else f"  (non-convertible: {s.reason})"
        kernel = f"{s.kernel_size[0]}x{s.kernel_size[1]}"
        stride = f"{s.stride[0]}x{s.stride[1]}" if s.stride[0] != s.stride[1] else str(s.stride[0])
        lines.append(f"  {s.index:>5}  {s.name:<{width}}  {kernel:<6}  {stride:<6}{note}".rstrip())
    return "\n".join(lines)


def select(policy: PolicySpec, sites: Sequence[ConvSite]) -> tuple[list[ConvSite], list[ConvSite]]:
    """Apply a policy: ``(selected convertible sites, matched but non-convertible sites)``.

    Raises ``PolicyError`` (listing the convs) for a spelling that does not parse, an index that does
    not exist, or a policy that selects no convertible conv.
    """
    try:
        rule = as_policy(policy)
    except PolicyError as exc:
        raise PolicyError(f"{exc}\n{format_sites(sites)}") from None
    rule.validate(sites)
    matched = [s for s in sites if rule.selects(s)]
    dcs = [s for s in matched if s.already_dcs]
    if dcs:
        names = ", ".join(f"{s.name} (index {s.index})" for s in dcs)
        others = [s for s in matched if s.convertible]
        fix = (
            f"{rule!r} & ~Name({', '.join(repr(s.name) for s in dcs)}) selects the rest"
            if others
            else "choose other convs"
        )
        raise PolicyError(
            f"policy {policy!r} ({rule!r}) selects layers that are already DCS: {names}; a conv is "
            f"transformed once: {fix}\n" + format_sites(sites)
        )
    chosen = [s for s in matched if s.convertible]
    refused = [s for s in matched if not s.convertible]
    if not chosen:
        why = "matches no conv"
        if refused:
            why = "matches only non-convertible convs: " + "; ".join(
                f"{s.name} ({s.reason})" for s in refused
            )
        raise PolicyError(f"policy {policy!r} ({rule!r}) {why}.\n" + format_sites(sites))
    return chosen, refused
