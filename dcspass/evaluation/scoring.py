"""Scoring adversarial examples on K fresh draws, and summarising the per-example verdicts.

A randomized model has no single accuracy on an input: each draw of taps may decide differently.
``score_draws`` returns the verdicts of K fresh draws per example (fresh per chunk of 16 images, so
one unlucky draw does not move a whole batch); from them:

- expected accuracy: the mean over examples and draws (an estimate of the probability that one
  deployed forward classifies the adversarial input correctly);
- all-K-correct accuracy: the fraction of examples that every one of the K draws gets right (what a
  defender can promise against an attacker who may query K times).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .draws import DrawRunner, TapSets

__all__ = ["SCORE_CHUNK", "Accuracy", "binomial_noise", "score_draws", "summarize"]


# Images per independent set of K draws when scoring. One draw of taps serves every image it is run
# on, so scoring a whole batch on the same K draws makes the batch's accuracy move with the luck of
# those K draws (a bad tap set is bad for most images). Fresh draws per chunk of images make the
# error of a row's mean shrink with the number of images too, at the cost of more, smaller runs.
SCORE_CHUNK = 16


def score_draws(
    runner: DrawRunner, x: torch.Tensor, y: torch.Tensor, draws: int, chunk: int = SCORE_CHUNK
) -> tuple[torch.Tensor, int]:
    """Verdicts of ``draws`` fresh draws, BoolTensor ``[K, B]`` (True = correct), and the count of
    non-finite logits (a non-finite output counts as wrong). No gradients.

    Every ``chunk`` images get their own K draws, independent of the other chunks' (see ``SCORE_CHUNK``).
    """
    parts = []
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk):
            parts.append(runner(x[start : start + chunk], TapSets.sample(draws)))
    logits = torch.cat(parts, 1)
    finite = torch.isfinite(logits).all(-1)
    return (logits.argmax(-1) == y) & finite, int((~finite).sum()) + int((~torch.isfinite(x)).sum())


@dataclass
class Accuracy:
    """One accuracy figure with its spread and how many samples it rests on.

    Attributes:
        mean: accuracy in [0, 1] (the mean over repeats for the paper protocol; the expected accuracy
            over K draws for the adaptive protocol).
        std: standard deviation over repeats (paper) or over draws (adaptive), in [0, 1].
        repeats: repeats with different seeds; draws: K scoring draws per example; examples: images.
        all_correct: all-K-correct accuracy (adaptive only), else None.
        per_repeat: accuracy of each repeat (paper); per_example: expected accuracy of each image (adaptive).
    """

    mean: float
    std: float
    repeats: int
    draws: int
    examples: int
    all_correct: float | None = None
    per_repeat: list[float] = field(default_factory=list)
    per_example: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
            "std": self.std,
            "repeats": self.repeats,
            "draws": self.draws,
            "examples": self.examples,
            "all_correct": self.all_correct,
            "per_repeat": self.per_repeat,
            "per_example": self.per_example,
        }


def summarize(verdicts: torch.Tensor) -> Accuracy:
    """From verdicts ``[K, N]`` of one run: expected accuracy, its std over draws, all-K-correct."""
    v = verdicts.float()
    per_draw = v.mean(1)
    return Accuracy(
        mean=float(v.mean()),
        std=float(per_draw.std()) if v.shape[0] > 1 else 0.0,
        repeats=1,
        draws=int(v.shape[0]),
        examples=int(v.shape[1]),
        all_correct=float(verdicts.all(0).float().mean()),
        per_example=v.mean(0).tolist(),
    )


def binomial_noise(p: float, n: int) -> float:
    """Two standard errors of an accuracy ``p`` measured on ``n`` examples, plus one example's worth."""
    n = max(n, 1)
    return 2 * math.sqrt(max(p * (1 - p), 0.0) / n) + 1 / n
