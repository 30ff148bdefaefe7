"""The Eq. 12 bound checker: which n a DCS layer with stride S and kernel k may use.

Eq. 12 of the paper bounds the number of taps n from both sides:

    lower(S, k) = ((k - S)^2 + k^4 * (1 - eps_l * S^2)) / (4 k S)  <=  n  <=  S^2 * eps_c = upper(S)

The lower bound keeps the L1 distance between the DCS output and the full convolution small (natural
accuracy, Lemma 2); the upper bound keeps the gradient cosine similarity between two draws small
(robustness, Lemma 1). The paper writes the L1 tolerance as ``eps_l / N`` with N the padded input size;
we take the tolerance per input pixel, so ``eps_l`` here is the paper's ``eps_l / N`` and the interval
depends on S and k only. docs/bounds.md derives this and tabulates common (S, k).
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import BoundError, ConfigError
from .validation import positive_int

__all__ = ["DEFAULT_EPS_C", "DEFAULT_EPS_L", "admissible", "check", "effective_stride", "interval"]

DEFAULT_EPS_C = 0.5  # gradient cosine-similarity tolerance (upper bound)
DEFAULT_EPS_L = 0.25  # per-pixel L1 tolerance (lower bound), the paper's eps_l / N


def interval(
    stride: int, k: int, eps_c: float = DEFAULT_EPS_C, eps_l: float = DEFAULT_EPS_L
) -> tuple[float, float]:
    """The admissible range ``(lower, upper)`` of n for stride S and DCS kernel size k (Eq. 12).

    The interval is empty (``lower > upper``) when no n is admissible, e.g. every stride-1 layer
    under the defaults. ``interval(2, 5) == (0.225, 2.0)``.
    """
    positive_int(stride, "stride")
    positive_int(k, "k")
    if not eps_c > 0 or not eps_l > 0:
        raise ConfigError(f"eps_c and eps_l must be positive, got eps_c={eps_c!r}, eps_l={eps_l!r}")
    s = stride
    lower = ((k - s) ** 2 + k**4 * (1 - eps_l * s**2)) / (4 * k * s)
    upper = s**2 * eps_c
    return float(lower), float(upper)


def effective_stride(stride: int | Sequence[int]) -> int:
    """The S that Eq. 12 uses for a (possibly anisotropic) stride: the smaller one, the stricter bound."""
    return stride if isinstance(stride, int) else min(stride)


def admissible(
    n: int, stride: int | Sequence[int], k: int, eps_c: float = DEFAULT_EPS_C, eps_l: float = DEFAULT_EPS_L
) -> bool:
    """Whether ``lower <= n <= upper`` for this layer."""
    lower, upper = interval(effective_stride(stride), k, eps_c, eps_l)
    return lower <= n <= upper


def check(
    name: str,
    n: int,
    stride: int | Sequence[int],
    k: int,
    eps_c: float = DEFAULT_EPS_C,
    eps_l: float = DEFAULT_EPS_L,
) -> None:
    """Raise ``BoundError`` naming the layer unless n is admissible for it."""
    s = effective_stride(stride)
    lower, upper = interval(s, k, eps_c, eps_l)
    if lower <= n <= upper:
        return
    where = f"[{lower:.4g}, {upper:.4g}]"
    if lower > upper:
        where = f"empty (lower {lower:.4g} > upper {upper:.4g})"
    raise BoundError(
        f"layer {name!r}: n={n} is outside the Eq. 12 interval for stride S={s}, k={k} "
        f"(eps_c={eps_c}, eps_l={eps_l}): the interval is {where}. "
        "Choose an admissible n, another layer (stride > 1), or pass check_bounds=False to run "
        "outside the bound on purpose (ablations such as the paper's Table 5)."
    )
