"""Evaluation budgets: ``"full"`` (the reference settings), ``"default"`` (CPU scale), ``"smoke"`` (tests).

A budget fixes how many images are attacked and how hard. Every number in a report is printed with
the name of the budget that produced it, so a reduced run is never mistaken for the reference one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import EvaluationError
from ..text import plural

__all__ = ["BUDGETS", "Budget", "get_budget"]


@dataclass(frozen=True)
class Budget:
    """How much work each attack and analysis gets. Step sizes follow eps (alpha = eps/4 = 2/255 at 8/255).

    Attributes:
        name: ``"full" | "default" | "smoke"`` (or a custom label).
        examples: test images evaluated (the first ones of the loader).
        batch_size: images per attack batch.
        repeats: paper-protocol repeats (different seeds), mean +- std over them.
        pgd_steps, mifgsm_steps, cw_steps, deepfool_steps, eotpgd_steps, eotpgd_samples: paper protocol.
        autoattack: ``"standard"`` = torchattacks' AutoAttack as shipped (the paper's tool);
            ``"apgd"`` = APGD-CE + APGD-T at ``apgd_steps`` (cheaper, labelled as such).
        eot_steps, eot_samples: adaptive EOT-PGD (cross-entropy on log E[softmax]).
        margin_steps, margin_samples: adaptive EOT-PGD on the margin of log E[softmax], each image's
            best iterate kept (``margin_steps=0`` leaves the row out).
        apgdt_targets: target classes of APGD-T in the reduced paper AutoAttack.
        apgd_steps, apgd_eot: adaptive AutoAttack ``rand`` (APGD-CE + APGD-DLR with EOT).
        exact_steps, exact_max_sets: exact-expectation PGD (every image); tap spaces above
            ``exact_max_sets`` are sampled, by the attack and by the scoring alike.
        known_steps, transfer_steps: known-taps and transfer PGD.
        square_queries, square_eot: Square with EOT.
        score_max_sets: the largest tap space scored exactly (None: ``exact_max_sets``); the smoke
            budget samples, so tests on real networks stay fast.
        sample_draws: draws per image when the scoring samples (more than one DCS layer, or a tap
            space above ``score_max_sets``); with one enumerable layer scoring is exact.
        all_correct_k: K of the all-K-correct accuracy (mean over images of p_i^K).
        sweep_steps, sweep_eps, sweep_eot, sweep_examples: accuracy-vs-attack-strength curves (Fig. 3);
            sweep_draws: draws per image scoring their adaptive points (sampled, not exact, to keep
            the curves cheap; the interval holds the draw noise).
        reference_rows: run the two pyautoattack rows (when the package is installed).
        cosine_examples, cosine_pairs: gradient cosine-similarity analysis (Fig. 4): images, and
            pairs of draws per batch of images.
        reference_steps, reference_targets, reference_square_queries, reference_eot: the reference
            AutoAttack (``pyautoattack``) on the live model: iterations of every APGD and of FAB-T,
            target classes of APGD-T and FAB-T, Square's queries (``standard``), and the forwards
            averaged per APGD step (``rand``). The defaults are the reference settings.
    """

    name: str
    examples: int
    batch_size: int
    repeats: int
    pgd_steps: int = 20
    mifgsm_steps: int = 5
    cw_steps: int = 50
    deepfool_steps: int = 50
    eotpgd_steps: int = 20
    eotpgd_samples: int = 10
    autoattack: str = "standard"
    apgdt_targets: int = 9
    apgd_steps: int = 100
    eot_steps: int = 100
    eot_samples: int = 20
    margin_steps: int = 100
    margin_samples: int = 20
    apgd_eot: int = 20
    exact_steps: int = 100
    exact_max_sets: int = 1000
    known_steps: int = 100
    transfer_steps: int = 100
    square_queries: int = 5000
    square_eot: int = 20
    score_max_sets: int | None = None
    sample_draws: int = 64
    all_correct_k: int = 8
    sweep_steps: tuple[int, ...] = (1, 5, 10, 20, 50, 100)
    sweep_eps: tuple[float, ...] = (2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255, 64 / 255)
    sweep_eot: tuple[int, ...] = (1, 2, 5, 10, 20)
    sweep_examples: int = 1000
    sweep_draws: int = 64
    reference_rows: bool = True
    cosine_examples: int = 1000
    cosine_pairs: int = 4
    reference_steps: int = 100
    reference_targets: int = 9
    reference_square_queries: int = 5000
    reference_eot: int = 20

    def describe(self) -> str:
        """One line naming the budget and its main settings (printed beside every number)."""
        return (
            f"budget={self.name}: {plural(self.examples, 'image')}, paper x{plural(self.repeats, 'repeat')}, "
            f"EOT-PGD {plural(self.eot_steps, 'step')} x {plural(self.eot_samples, 'draw')}, margin EOT-PGD "
            f"{self.margin_steps} x {self.margin_samples}, APGD {self.apgd_steps} it. EOT {self.apgd_eot}, "
            f"exact PGD {plural(self.exact_steps, 'step')}; all-{self.all_correct_k}-correct"
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


BUDGETS: dict[str, Budget] = {
    # The reference settings.
    "full": Budget(name="full", examples=1000, batch_size=100, repeats=10),
    # CPU scale: both protocols for one narrow ResNet-18 on Fashion-MNIST, every adaptive input scored
    # exactly over all tap sets, so the main job (four networks, their training) fits in about 10 minutes.
    "default": Budget(
        name="default",
        examples=128,
        batch_size=64,
        repeats=2,
        pgd_steps=20,
        mifgsm_steps=5,
        cw_steps=3,
        deepfool_steps=2,
        eotpgd_steps=2,
        eotpgd_samples=2,
        autoattack="apgd",
        apgdt_targets=1,
        apgd_steps=5,
        eot_steps=10,
        eot_samples=8,
        margin_steps=40,
        margin_samples=8,
        apgd_eot=4,
        exact_steps=2,  # ~1 min per step on 128 images and 2 cores: the costliest row of the budget
        exact_max_sets=300,
        known_steps=10,
        transfer_steps=10,
        square_queries=20,
        square_eot=2,
        sample_draws=64,
        all_correct_k=8,
        sweep_steps=(1, 2, 5, 10, 20),
        sweep_eps=(2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255, 64 / 255),
        sweep_eot=(1, 2, 4, 8, 16),
        sweep_examples=32,
        sweep_draws=16,
        cosine_examples=32,
        cosine_pairs=16,  # 32 images are one batch: without more pairs, one draw pair decides the mean
        # The reduced pyautoattack rows (5 iterations, 20 Square queries) never set the worst case in
        # the embedded default and cost more than they add; the full budget runs them.
        reference_rows=False,
        reference_steps=5,
        reference_targets=1,
        reference_square_queries=20,
        reference_eot=4,
    ),
    # Tests: seconds on a tiny model.
    "smoke": Budget(
        name="smoke",
        examples=8,
        batch_size=8,
        repeats=2,
        pgd_steps=3,
        mifgsm_steps=2,
        cw_steps=2,
        deepfool_steps=2,
        eotpgd_steps=2,
        eotpgd_samples=2,
        autoattack="apgd",
        apgdt_targets=1,
        apgd_steps=2,
        eot_steps=3,
        eot_samples=4,
        margin_steps=3,
        margin_samples=2,
        apgd_eot=2,
        exact_steps=1,
        exact_max_sets=300,
        known_steps=3,
        transfer_steps=3,
        square_queries=10,
        square_eot=2,
        score_max_sets=0,
        sample_draws=8,
        all_correct_k=4,
        sweep_steps=(1, 3),
        sweep_eps=(8 / 255, 64 / 255),
        sweep_eot=(1, 2),
        sweep_examples=8,
        sweep_draws=4,
        cosine_examples=8,
        cosine_pairs=1,
        reference_steps=2,
        reference_targets=1,
        reference_square_queries=10,
        reference_eot=2,
    ),
}


def get_budget(budget: str | Budget) -> Budget:
    """Look a budget up by name (``"smoke" | "default" | "full"``) or pass a ``Budget`` through."""
    if isinstance(budget, Budget):
        return budget
    if budget not in BUDGETS:
        raise EvaluationError(f"budget must be one of {sorted(BUDGETS)} or a Budget, got {budget!r}")
    return BUDGETS[budget]
