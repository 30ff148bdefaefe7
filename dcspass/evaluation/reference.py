"""AutoAttack as its authors ship it (the ``pyautoattack`` package), run on the live randomized model.

These rows belong to the adaptive protocol: no taps are frozen, so every forward pyautoattack makes
draws new taps, as in deployment. Its outputs are then scored on K fresh draws like every other
attack's, and they are worst-case candidates.

What the reference code does on a randomized model (``pyautoattack/autoattack.py``,
``AutoAttack.run_standard_evaluation``): it decides "still robust" from **one** forward, first on
the clean input, then after each sub-attack on its output, and only images judged robust go on to
the next sub-attack. Each sub-attack returns per image a point one of its own forwards misclassified,
or the clean image; so an image judged robust at the end comes back clean, and one misclassified by
the first forward is never attacked. ``rand`` runs APGD-CE and APGD-DLR with the gradient averaged
over ``eot_iter`` forwards, but judges each step on the last of them alone. ``standard`` first runs
``checks.check_randomized`` (five forwards of the first batch), which warns "it seems to be a
randomized defense! Please use version="rand"" on a DCS model; ``rand`` skips that check. The
package is optional: without it the rows are skipped with a note.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Iterator

import torch
from torch import nn

from ..errors import EvaluationError
from ..text import plural
from .attacks import AttackFn, isolated_rng
from .budget import Budget
from .context import EvalContext

__all__ = ["INSTALL_HINT", "ROWS", "ReferenceAutoAttack", "pyautoattack_version", "reference_attacks"]

INSTALL_HINT = "pip install dcspass[reference]"
ROWS = {"standard": "AutoAttack standard (pyautoattack)", "rand": "AutoAttack rand (pyautoattack)"}

log = logging.getLogger(__name__)


def pyautoattack_version() -> str | None:
    """The installed ``pyautoattack`` version, or None when it cannot be imported."""
    try:
        import pyautoattack
    except ImportError:
        return None
    return pyautoattack.__version__


def reference_attacks(ctx: EvalContext, notes: list[str]) -> dict[str, tuple[str, AttackFn, bool]]:
    """The two pyautoattack rows (``standard``, ``rand``) for ``adaptive_attacks``, worst-case candidates.

    ``notes`` receives pyautoattack's warnings and its own robust accuracy per row, or, when the package
    is missing, why the rows were skipped.
    """
    if not ctx.budget.reference_rows:
        notes.append(f"{ROWS['standard']} and {ROWS['rand']}: not run at budget {ctx.budget.name}")
        return {}
    if pyautoattack_version() is None:
        notes.append(
            f"{ROWS['standard']} and {ROWS['rand']}: skipped, pyautoattack is not installed "
            f"(`{INSTALL_HINT}`)"
        )
        return {}
    rows: dict[str, tuple[str, AttackFn, bool]] = {}
    for version in ROWS:
        attack = ReferenceAutoAttack(ctx.model, ctx.eps, version, ctx.budget, ctx.n_classes, notes)
        rows[attack.name] = (attack.description, attack, True)
    return rows


class ReferenceAutoAttack:
    """pyautoattack's ``AutoAttack(version=...)`` as an attack ``(x, y) -> x_adv`` on the live model.

    Args:
        model: the classifier, forwarded as is (a DCS model draws new taps at every forward).
        eps: L_inf radius on the [0, 1] scale.
        version: ``"standard"`` (APGD-CE, APGD-T, FAB-T, Square) or ``"rand"`` (APGD-CE, APGD-DLR, EOT).
        budget: its ``reference_*`` fields set iterations, target classes, queries and EOT forwards.
        n_classes: classes the model outputs (targeted attacks use at most ``n_classes - 1`` targets).
        notes: where pyautoattack's warnings (once each) and its own robust accuracy go.

    Attributes:
        judged_robust, judged_total: pyautoattack's verdicts summed over calls, each from one forward.

    pyautoattack re-seeds torch's global RNG at every sub-attack, so each call runs inside
    ``isolated_rng``: its seed is one draw of the evaluation's stream, which it otherwise leaves alone.
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        version: str,
        budget: Budget,
        n_classes: int,
        notes: list[str] | None = None,
    ) -> None:
        if version not in ROWS:
            raise EvaluationError(f"pyautoattack version must be one of {sorted(ROWS)}, got {version!r}")
        self.model = model
        self.eps = eps
        self.version = version
        self.budget = budget
        self.targets = min(budget.reference_targets, n_classes - 1)
        self.notes = notes if notes is not None else []
        self.name = ROWS[version]
        self.judged_robust = 0
        self.judged_total = 0
        self._summary_at: int | None = None

    @property
    def description(self) -> str:
        """What runs, with this budget's settings."""
        b = self.budget
        if self.version == "standard":
            targets = plural(self.targets, "target")
            attacks = (
                f"APGD-CE {b.reference_steps} it., APGD-T {b.reference_steps} it. x {targets}, "
                f"FAB-T {b.reference_steps} it. x {targets}, Square {b.reference_square_queries} queries"
            )
        else:
            forwards = plural(b.reference_eot, "forward")
            attacks = f"APGD-CE + APGD-DLR, {b.reference_steps} it., EOT over {forwards} per step"
        return (
            f"pyautoattack {pyautoattack_version()} AutoAttack {self.version} on the live model: {attacks}; "
            "it attacks an image until one forward misclassifies it"
        )

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:

        with isolated_rng() as seed:  # pyautoattack reseeds torch on every call: a fresh seed each time
            return self._attack(x, y, seed)

    def _attack(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
        from pyautoattack import AutoAttack

        attack = AutoAttack(
            self.model, norm="Linf", eps=self.eps, version=self.version, seed=seed, device=x.device
        )
        b = self.budget
        # pyautoattack's APGD derives its step-size checkpoints from n_iter in __init__ only.
        for apgd in (attack.apgd, attack.apgd_targeted):
            set_apgd_iterations(apgd, b.reference_steps)
        attack.apgd_targeted.n_target_classes = self.targets
        attack.fab.n_iter = b.reference_steps
        attack.fab.n_target_classes = self.targets
        attack.square.n_queries = b.reference_square_queries
        if self.version == "rand":
            attack.apgd.eot_iter = b.reference_eot
        warned: list[str] = []
        was_training = self.model.training
        self.model.eval()
        try:
            with _captured(warned):
                x_adv, y_judged = attack.run_standard_evaluation(x, y, batch_size=x.shape[0])
        finally:
            self.model.train(was_training)
        self.judged_robust += int((y_judged == y).sum())
        self.judged_total += int(y.shape[0])
        self._report(warned)
        return x_adv.detach()

    def _report(self, warned: list[str]) -> None:
        for message in warned:
            note = f"{self.name}: pyautoattack warned: {message}"
            if note not in self.notes:
                self.notes.append(note)
        robust, total = self.judged_robust, self.judged_total
        summary = (
            f"{self.name}: pyautoattack's own robust accuracy, one forward per verdict, "
            f"{robust}/{total} = {100 * robust / total:.1f} %; the row re-scores its outputs on K fresh draws"
        )
        # One summary line per row, updated as batches come in.
        if self._summary_at is None:
            self._summary_at = len(self.notes)
            self.notes.append(summary)
        else:
            self.notes[self._summary_at] = summary


def set_apgd_iterations(apgd: object, steps: int) -> None:
    """Give a pyautoattack ``APGDAttack`` ``steps`` iterations with step-size checkpoints to match.

    APGD may halve its step at checkpoints spaced 22 % of the iterations apart at first, the spacing
    shrinking by 3 % to at least 6 % (Croce & Hein 2020). pyautoattack computes them once, in
    ``__init__``, so setting ``n_iter`` alone keeps checkpoints spaced for 100 iterations (the first at 22).
    """
    apgd.n_iter = apgd.n_iter_orig = steps
    apgd.n_iter_2 = max(int(0.22 * steps), 1)
    apgd.n_iter_min = max(int(0.06 * steps), 1)
    apgd.size_decr = max(int(0.03 * steps), 1)


class _Collect(logging.Handler):
    """Warnings of pyautoattack's logger into a list (once each); the rest to this module's debug log."""

    def __init__(self, warned: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.warned = warned

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno < logging.WARNING:
            log.debug("pyautoattack: %s", message)
        elif message not in self.warned:
            self.warned.append(message)


@contextlib.contextmanager
def _captured(warned: list[str]) -> Iterator[None]:
    """Keep pyautoattack off the console: its log (logger ``auto-attack``) and any print.

    ``checks.check_dynamic`` traces one forward with ``sys.settrace`` and then clears the trace
    function, which would switch off a debugger or coverage: the previous one is put back.
    """
    source = logging.getLogger("auto-attack")
    level, propagate, tracer = source.level, source.propagate, sys.gettrace()
    handler = _Collect(warned)
    source.addHandler(handler)
    source.propagate = False
    source.setLevel(logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.WARNING)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        source.removeHandler(handler)
        source.setLevel(level)
        source.propagate = propagate
        sys.settrace(tracer)
        if printed.getvalue():
            log.debug("pyautoattack printed: %s", printed.getvalue().rstrip())
