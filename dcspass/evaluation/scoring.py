"""Scoring inputs on a randomized model: the per-image probability that a fresh draw classifies right.

A DCS model has no single verdict on an input; what a defender can promise is, per image, the
probability p_i over the tap draw that one deployed forward classifies it correctly. ``Scorer``
computes it

- **exactly** when the tap space can be enumerated (one DCS layer, ``C(k*k, n) <= max_sets`` tap
  sets: 300 for k=5, n=2): the model runs once before the DCS layer and then under every tap set
  (``DrawRunner``), and p_i is the fraction of tap sets that classify image i correctly;
- **by sampling** otherwise: ``draws`` (>= 64 by default) draws per image, independent between
  images (every image runs alone, under its own seed) and the same for every input scored on that
  image (common random numbers: a per-image minimum over attacks compares like with like);
- as a 0/1 verdict for a deterministic model.

From the p_i: the expected accuracy (their mean) and the probability that all K independent draws
are correct (the mean of p_i^K, exact when p_i is; what a defender can promise to an attacker who
may query K times). Intervals come from ``stats``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..text import plural
from .draws import DrawRunner, TapSets, all_tap_sets, n_tap_sets
from .stats import accuracy_interval

__all__ = ["Accuracy", "Scorer"]

# Images per exact-scoring run: the runner handles M tap sets x B images in chunks of rows itself.
EXACT_IMAGES = 32


class Scorer:
    """Per-image probabilities of a correct prediction under a fresh draw of taps.

    Args:
        runner: the model's ``DrawRunner``.
        max_sets: the largest tap space scored exactly (one DCS layer only).
        draws: draws per image when sampling.
        seed: base of the per-image seeds of sampled scoring (image i uses ``seed * 1_000_003 + i``).
    """

    def __init__(self, runner: DrawRunner, max_sets: int, draws: int, seed: int) -> None:
        self.runner = runner
        self.draws = draws
        self.seed = seed
        self.nonfinite = 0
        layer = runner.first_layer
        self.tap_sets: torch.Tensor | None = None
        if runner.deterministic:
            self.method = "deterministic model: one forward"
        elif runner.layer_count == 1 and n_tap_sets(layer) <= max_sets:
            self.tap_sets = all_tap_sets(layer)
            self.method = (
                f"exact over all C({layer.num_positions},{layer.n})={n_tap_sets(layer)} tap sets "
                f"of {runner.first_name}"
            )
        else:
            if runner.layer_count > 1:
                why = f"{runner.layer_count} DCS layers"
            elif max_sets > 0:
                why = f"{n_tap_sets(layer)} tap sets, more than the {max_sets} scored exactly"
            else:
                why = "exact scoring off"
            self.method = f"sampled: {plural(draws, 'independent draw')} per image ({why})"

    @property
    def exact(self) -> bool:
        """True when the probabilities carry no sampling noise (enumerated, or a deterministic model)."""
        return self.tap_sets is not None or self.runner.deterministic

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """p_i for ``x [N, C, H, W]``, ``y [N]``: float64 ``[N]``, CPU (non-finite logits count wrong)."""
        with torch.no_grad():
            if self.runner.deterministic:
                return self._correct(self.runner(x, TapSets.sample(1)), y).double().mean(0).cpu()
            if self.tap_sets is not None:
                sets = TapSets.given(self.tap_sets)
                parts = [
                    self._correct(self.runner(x[i : i + EXACT_IMAGES], sets), y[i : i + EXACT_IMAGES])
                    for i in range(0, x.shape[0], EXACT_IMAGES)
                ]
                return torch.cat(parts, 1).double().mean(0).cpu()
            parts = []
            for i in range(x.shape[0]):
                devices = [x.device] if x.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(self.seed * 1_000_003 + i)
                    logits = self.runner(x[i : i + 1], TapSets.sample(self.draws))
                parts.append(self._correct(logits, y[i : i + 1]))
            return torch.cat(parts, 1).double().mean(0).cpu()

    def _correct(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``[M, B]`` verdicts of logits ``[M, B, classes]``; non-finite rows are wrong and counted."""
        finite = torch.isfinite(logits).all(-1)
        self.nonfinite += int((~finite).sum())
        return (logits.argmax(-1) == y) & finite


@dataclass
class Accuracy:
    """One accuracy figure: the mean over images, its 95 % interval, and what it rests on.

    Attributes:
        mean: accuracy in [0, 1]: the mean over images of each image's probability of a correct
            prediction (over the tap draw; for the paper protocol also averaged over repeats).
        low, high: 95 % interval over images (``stats.accuracy_interval``).
        examples: images; repeats: paper-protocol repeats (1 for the adaptive protocol).
        scoring: how the per-image probabilities were obtained (exact, sampled, one draw per image).
        all_correct: mean of p_i^K, the probability that all K independent draws are correct, and
            all_correct_k: that K (None where not computed).
        std: standard deviation over repeats (paper protocol), else 0.
        per_repeat: accuracy of each repeat; per_example: each image's probability (mean over repeats).
    """

    mean: float
    low: float
    high: float
    examples: int
    scoring: str
    repeats: int = 1
    all_correct: float | None = None
    all_correct_k: int | None = None
    std: float = 0.0
    per_repeat: list[float] = field(default_factory=list)
    per_example: list[float] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        per_example: torch.Tensor,
        scoring: str,
        k: int | None = None,
        per_repeat: list[float] | None = None,
    ) -> Accuracy:
        """From per-image probabilities ``[N]`` (and, for the paper protocol, the repeats' accuracies)."""
        p = per_example.double()
        low, high = accuracy_interval(p.tolist())
        repeats = per_repeat or []
        std = float(torch.tensor(repeats).std()) if len(repeats) > 1 else 0.0
        return cls(
            mean=float(p.mean()),
            low=low,
            high=high,
            examples=int(p.numel()),
            scoring=scoring,
            repeats=max(len(repeats), 1),
            all_correct=float(p.pow(k).mean()) if k else None,
            all_correct_k=k,
            std=std,
            per_repeat=repeats,
            per_example=p.tolist(),
        )

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
            "low": self.low,
            "high": self.high,
            "examples": self.examples,
            "scoring": self.scoring,
            "repeats": self.repeats,
            "all_correct": self.all_correct,
            "all_correct_k": self.all_correct_k,
            "std": self.std,
            "per_repeat": self.per_repeat,
            "per_example": self.per_example,
        }
