"""The reference AutoAttack rows (pyautoattack) of the adaptive protocol: wiring, threat model, verdicts."""

from __future__ import annotations

import sys

import pytest
import torch

from dcspass.evaluation import evaluate, get_budget
from dcspass.evaluation.context import EvalContext
from dcspass.evaluation.draws import DrawRunner
from dcspass.evaluation.protocols import adaptive_attacks
from dcspass.evaluation.reference import (
    INSTALL_HINT,
    ROWS,
    ReferenceAutoAttack,
    pyautoattack_version,
    set_apgd_iterations,
)
from dcspass.evaluation.scoring import Scorer

from .test_evaluation import TinyDCSNet, _loader, fmnist_test, trained  # noqa: F401 (fixtures)

EPS = 8 / 255

pytestmark = pytest.mark.usefixtures("one_thread")
needs_pyautoattack = pytest.mark.skipif(
    pyautoattack_version() is None, reason=f"pyautoattack is not installed ({INSTALL_HINT})"
)


@pytest.fixture(scope="module")
def deterministic(trained):  # noqa: F811
    plain = TinyDCSNet(dcs=False)
    plain.load_state_dict(trained.state_dict())
    return plain.eval()


@needs_pyautoattack
def test_rows_join_the_adaptive_protocol(trained, fmnist_test):  # noqa: F811
    x, y = fmnist_test[0][:8], fmnist_test[1][:8]
    report = evaluate(trained, _loader(x, y, batch=4), protocol="adaptive", budget="smoke", analyses=False)
    smoke = get_budget("smoke")
    assert report.config["pyautoattack"] == pyautoattack_version()
    acc = report.adaptive.accuracies
    for name in ROWS.values():
        assert acc[name].examples == 8 and acc[name].scoring == report.config["scoring"]
        assert 0 <= acc[name].all_correct <= acc[name].mean <= 1
        assert pyautoattack_version() in report.adaptive.descriptions[name]
    notes = report.adaptive.notes
    # standard's randomness check fires on the DCS model; rand skips it.
    assert any(n.startswith(ROWS["standard"]) and "randomized defense" in n for n in notes)
    assert not any(n.startswith(ROWS["rand"]) and "randomized defense" in n for n in notes)
    # One summary per row, summed over both batches of 4.
    for name in ROWS.values():
        (summary,) = [n for n in notes if n.startswith(name) and "own robust accuracy" in n]
        assert "/8 =" in summary
    ctx = EvalContext(trained, DrawRunner(trained), EPS, smoke, 10, 0)
    attacks = adaptive_attacks(ctx)
    assert all(attacks[name][2] for name in ROWS.values()), "the rows must be worst-case candidates"


@needs_pyautoattack
@pytest.mark.parametrize("version", sorted(ROWS))
def test_outputs_stay_in_the_eps_ball_and_leave_the_rng_alone(trained, fmnist_test, version):  # noqa: F811
    x, y = fmnist_test[0][:16], fmnist_test[1][:16]
    eps = 16 / 255  # large enough that some images break, so the outputs are not just the clean inputs
    attack = ReferenceAutoAttack(trained, eps, version, get_budget("smoke"), 10)
    torch.manual_seed(1)
    torch.randint(0, 2**62, (), dtype=torch.int64)  # the one draw that seeds the attack
    after_one_draw = torch.get_rng_state()
    torch.manual_seed(1)
    adv = attack(x, y)
    assert torch.equal(torch.get_rng_state(), after_one_draw), "pyautoattack's seeding leaked into the RNG"
    assert adv.shape == x.shape and torch.isfinite(adv).all()
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv != x).flatten(1).any(1).sum() > 0, "no image was perturbed: the attack did not run"
    assert attack.judged_total == 16


@needs_pyautoattack
@pytest.mark.parametrize("version", sorted(ROWS))
def test_own_verdict_equals_the_rescored_one_when_deterministic(deterministic, fmnist_test, version):  # noqa: F811
    x, y = fmnist_test[0][:16], fmnist_test[1][:16]
    notes: list[str] = []
    attack = ReferenceAutoAttack(deterministic, 16 / 255, version, get_budget("smoke"), 10, notes)
    adv = attack(x, y)
    rescored = int(Scorer(DrawRunner(deterministic), 300, 4, 0)(adv, y).sum())
    assert attack.judged_robust == rescored, (attack.judged_robust, rescored)
    assert not any("randomized defense" in n for n in notes)


def test_missing_package_skips_the_rows_with_a_note(trained, fmnist_test, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # makes `import pyautoattack` raise ImportError
    x, y = fmnist_test[0][:4], fmnist_test[1][:4]
    report = evaluate(trained, _loader(x, y), protocol="adaptive", budget="smoke", analyses=False)
    assert not set(ROWS.values()) & set(report.adaptive.accuracies)
    assert "worst case" in report.adaptive.accuracies
    assert any(INSTALL_HINT in n for n in report.adaptive.notes)
    assert "pyautoattack" not in report.config


@needs_pyautoattack
def test_reduced_apgd_gets_the_checkpoints_of_its_iterations(deterministic):
    from pyautoattack.autopgd_base import APGDAttack

    for steps in (2, 5, 37):
        native = APGDAttack(deterministic, n_iter=steps, eps=EPS)
        reduced = APGDAttack(deterministic, n_iter=100, eps=EPS)
        set_apgd_iterations(reduced, steps)
        for field in ("n_iter", "n_iter_orig", "n_iter_2", "n_iter_min", "size_decr"):
            assert getattr(reduced, field) == getattr(native, field), (steps, field)
