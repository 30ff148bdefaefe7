"""Evaluation engine: exactness of the batched draws and attacks, sanity checks that can fail, reports."""

from __future__ import annotations

import dataclasses
import itertools
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dcspass
from dcspass.data import fashion_mnist_tensors
from dcspass.errors import EvaluationError
from dcspass.evaluation import Budget, compare_gradient_cosine, evaluate, get_budget, plot_cosine_comparison
from dcspass.evaluation.analyses import gradient_cosine, overlap_classes
from dcspass.evaluation.attacks import ExpectedModel, apgd, autoattack_paper, margin_pgd, pgd, square
from dcspass.evaluation.context import EvalContext
from dcspass.evaluation.draws import DrawRunner, TapSets, all_tap_sets
from dcspass.evaluation.protocols import ProtocolResult, adaptive_attacks, known_taps_batch
from dcspass.evaluation.reference import ROWS, pyautoattack_version
from dcspass.evaluation.sanity import check_gradient_free
from dcspass.evaluation.scoring import Accuracy, Scorer


class TinyDCSNet(nn.Module):
    """Conv -> stride-2 DCS (k=5, n=2) with a 1x1 shortcut -> conv -> linear; optional input quantizer.

    The quantizer (``floor(32 x) / 32``) has zero gradient everywhere: a textbook gradient-masked model.
    """

    def __init__(self, quantize: bool = False, dcs: bool = True) -> None:
        super().__init__()
        self.quantize = quantize
        self.c0 = nn.Conv2d(1, 8, 3, padding=1)
        if dcs:
            self.mid = dcspass.DCSConv2d(8, 16, 5, n=2, stride=2, padding=2)
        else:
            self.mid = nn.Conv2d(8, 16, 5, stride=2, padding=2)
        self.short = nn.Conv2d(8, 16, 1, stride=2)
        self.c2 = nn.Conv2d(16, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantize:
            x = torch.floor(x * 32) / 32
        h = F.relu(self.c0(x))
        h = F.relu(self.mid(h) + self.short(h))
        h = F.relu(self.c2(h))
        return self.head(h.flatten(1))


@pytest.fixture(scope="module")
def fmnist_test():
    return fashion_mnist_tensors(train=False, limit=256)


@pytest.fixture(scope="module")
def trained(fmnist_test):
    """A TinyDCSNet trained clean for a few seconds on Fashion-MNIST (about 70-80 % test accuracy)."""
    torch.manual_seed(0)
    model = _fit_one_epoch(TinyDCSNet(), images=2000)
    xt, yt = fmnist_test
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean()
    assert acc > 0.6, f"fixture model did not train ({acc:.2f})"
    return model


def _fit_one_epoch(model: nn.Module, images: int) -> nn.Module:
    """One clean epoch of Adam on the first ``images`` Fashion-MNIST training images; eval mode after."""
    x, y = fashion_mnist_tensors(train=True, limit=images)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for i in range(0, x.shape[0], 50):
        opt.zero_grad()
        F.cross_entropy(model(x[i : i + 50]), y[i : i + 50]).backward()
        opt.step()
    return model.eval()


def _loader(x, y, batch=32):
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, x.shape[0], batch)]


def _ctx(model, budget="smoke", eps=8 / 255):
    runner = DrawRunner(model)
    return EvalContext(model, runner, eps, get_budget(budget), 10, 0)


# -- exactness ------------------------------------------------------------------------------------


def test_known_taps_attack_equals_attack_on_masked_conv(trained, fmnist_test):
    x, y = fmnist_test[0][:16], fmnist_test[1][:16]
    ctx = _ctx(trained)
    torch.manual_seed(123)
    adv, verdicts, taps = known_taps_batch(ctx, x, y)
    layer_taps = taps["mid"]

    twin = TinyDCSNet(dcs=False)
    twin.load_state_dict(trained.state_dict())
    mask = torch.zeros(25)
    mask[layer_taps] = 1
    with torch.no_grad():
        twin.mid.weight.mul_(mask.view(1, 1, 5, 5))
    twin.eval()
    torch.manual_seed(123)
    assert torch.equal(trained.mid.draw_taps(), layer_taps)  # same RNG stream up to the attack's start
    adv_twin = pgd(twin, ctx.eps, ctx.budget.known_steps)(x, y)

    # Same attack, same random start: the iterates agree up to float rounding (sign flips at ~0 gradients).
    mismatch = ((adv - adv_twin).abs() > 1e-5).float().mean()
    assert mismatch < 0.01, f"{mismatch:.4f} of the pixels differ"
    with torch.no_grad():
        twin_correct = twin(adv_twin).argmax(1) == y
    assert verdicts.shape == (16,)  # one verdict per image, from the frozen draw
    assert (verdicts == twin_correct).float().mean() > 0.9


def test_exact_expectation_equals_independent_average(trained, fmnist_test):
    x = fmnist_test[0][:2].clone()
    runner = DrawRunner(trained, max_rows=256)  # 300 sets x 2 images: several checkpointed chunks
    assert runner.split
    sets = all_tap_sets(trained.mid)
    assert sets.shape == (300, 2)
    model = ExpectedModel(trained, runner, tap_sets=sets)

    xa = x.clone().requires_grad_(True)
    fast = model(xa)
    (g_fast,) = torch.autograd.grad(fast[:, 3].sum(), xa)

    xb = x.clone().requires_grad_(True)
    probs = []
    for taps in itertools.combinations(range(25), 2):
        with dcspass.using_taps(trained, {"mid": torch.tensor(taps)}):
            probs.append(trained(xb).softmax(-1))
    reference = torch.stack(probs).mean(0).log()
    (g_ref,) = torch.autograd.grad(reference[:, 3].sum(), xb)

    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_fast, g_ref, atol=1e-6, rtol=1e-4)


def test_margin_pgd_stays_in_the_ball_and_keeps_each_images_best_iterate(trained, fmnist_test):
    x, y = fmnist_test[0][:32], fmnist_test[1][:32]
    eps = 16 / 255
    taps = torch.tensor([3, 17])
    torch.manual_seed(0)
    with dcspass.using_taps(trained, taps):  # a deterministic model: margins are exact
        adv = margin_pgd(trained, eps, steps=10)(x, y)
        clean_margin, adv_margin = (_margin(trained(v), y) for v in (x, adv))
        one_step = margin_pgd(trained, eps, steps=1)
        torch.manual_seed(0)
        short = one_step(x, y)
        short_margin = _margin(trained(short), y)
    assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert (adv_margin > 0).float().mean() > (clean_margin > 0).float().mean() + 0.3
    # The same random start and first step: ten steps keep the best iterate, so never a lower margin.
    assert (adv_margin >= short_margin - 1e-5).all()


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    true = logits.gather(1, y[:, None]).squeeze(1)
    return logits.scatter(1, y[:, None], float("-inf")).max(1).values - true


@pytest.mark.parametrize("name", ["AutoAttack (paper)", "APGD", "Square"])
def test_reseeding_attacks_leave_the_draws_that_follow_them_independent(trained, fmnist_test, name):
    """torchattacks' APGD, APGD-T and Square reseed torch's global generator on every call. Two batches
    attacked alike must still hand different draws to the rows and batches after them, as the
    intervals over images and repeats assume."""
    x, y = fmnist_test[0][:8], fmnist_test[1][:8]
    attack = {
        "AutoAttack (paper)": lambda: autoattack_paper(trained, 8 / 255, 10, 0, "apgd", 2, 1),
        "APGD": lambda: apgd(trained, 8 / 255, 2, "ce", 0),
        "Square": lambda: square(trained, 8 / 255, 5, 0),
    }[name]()
    following = []
    for caller_seed in (1, 2):  # two batches whose streams differ before the attack
        torch.manual_seed(caller_seed)
        with dcspass.using_taps(trained, torch.tensor([0, 12])):  # the same model for both
            attack(x, y)
        following.append(torch.stack([trained.mid.draw_taps() for _ in range(8)]))
    assert not torch.equal(following[0], following[1]), f"{name} reset the caller's stream"


def test_batched_draws_reach_the_op_through_the_layer(monkeypatch):
    """DrawRunner convolves through DCSConv2d.convolve -> dcspass.functional, as forward does, so a
    reflect-padded layer gives the same outputs as ordinary forwards under the same taps."""
    import dcspass.functional as functional

    calls = []
    fast_path = functional._dcs_conv2d_checked_geometry
    monkeypatch.setattr(
        functional, "_dcs_conv2d_checked_geometry", lambda *a, **kw: calls.append(1) or fast_path(*a, **kw)
    )
    torch.manual_seed(0)
    layer = dcspass.DCSConv2d(1, 3, 5, n=2, stride=2, padding=2, padding_mode="reflect")
    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), layer, nn.Flatten(), nn.Linear(3 * 4 * 4, 4))
    runner = DrawRunner(model)
    assert runner.split
    sets = all_tap_sets(layer)[[0, 7, 299]]
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        out = runner(x, TapSets.given(sets))
        assert calls
        for i, taps in enumerate(sets):
            with dcspass.using_taps(model, {"1": taps}):
                torch.testing.assert_close(out[i], model(x))


def test_sampled_draws_use_distinct_taps_per_group(trained, fmnist_test):
    """EOT draws in one batched run are independent: groups see different tap sets, not one."""
    x = fmnist_test[0][:2]
    runner = DrawRunner(trained)
    with torch.no_grad():
        out = runner(x, TapSets.sample(16))
    assert out.shape == (16, 2, 10)
    distinct = {tuple(o.flatten().round(decimals=4).tolist()) for o in out}
    assert len(distinct) > 4


def test_untraceable_model_falls_back_with_same_result(trained, fmnist_test):
    class Branchy(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
                return self.inner(x)
            return -self.inner(x)

    model = Branchy(trained)
    with pytest.warns(UserWarning, match="does not trace"):
        runner = DrawRunner(model)
    assert not runner.split
    x = fmnist_test[0][:2]
    sets = all_tap_sets(trained.mid)[:5]
    with torch.no_grad():
        out = runner(x, TapSets.given(sets))
        for i, taps in enumerate(sets):
            with dcspass.using_taps(model, {"inner.mid": taps}):
                torch.testing.assert_close(out[i], model(x))


def test_overlap_classes_for_stride_two():
    layer = dcspass.DCSConv2d(4, 4, 5, n=2, stride=2, padding=2)
    classes = overlap_classes(layer, torch.tensor([0, 1]))  # taps (0,0) and (0,1)
    assert classes["s"].tolist() == [0, 1]
    # Even rows are stride-aligned with row 0 (every column is aligned with column 0 or 1); odd rows never.
    assert sorted(classes["g"].tolist()) == [p for p in range(25) if (p // 5) % 2 == 0 and p > 1]
    assert sorted(classes["u"].tolist()) == [p for p in range(25) if (p // 5) % 2 == 1]


# -- sanity checks can fail -------------------------------------------------------------------------

_MASKING_BUDGET = Budget(
    name="masking-test",
    examples=40,
    batch_size=40,
    repeats=1,
    eot_steps=5,
    eot_samples=2,
    margin_steps=0,  # its random start alone crosses the quantizer's steps at 48/255: not what this tests
    apgd_steps=3,
    apgd_eot=1,
    exact_steps=1,
    exact_max_sets=10,  # sampled attack and scoring: 40 images x 300 tap sets per row is not needed here
    known_steps=1,
    square_queries=250,
    square_eot=1,
    sample_draws=4,
    reference_steps=3,
    reference_targets=1,
    reference_square_queries=250,
    reference_eot=1,
)


@pytest.mark.slow
def test_gradient_free_check_trips_on_gradient_masking(trained, fmnist_test):
    # eps 48/255 lets a short Square search move pixels across the quantizer's 8/255 steps.
    # eps 48/255 lets a short Square search move pixels across the quantizer's 8/255 steps.
    x, y = fmnist_test[0][:40], fmnist_test[1][:40]
    masked = TinyDCSNet(quantize=True)
    masked.load_state_dict(trained.state_dict())
    masked.eval()
    reports = {}
    for name, model in (("healthy", trained), ("masked", masked)):
        reports[name] = evaluate(
            model, _loader(x, y), protocol="adaptive", budget=_MASKING_BUDGET, analyses=False, eps=48 / 255
        )
    checks = {n: {c.name: c for c in r.sanity} for n, r in reports.items()}
    name = "gradient-free does not beat gradient-based"
    masked_check, healthy_check = checks["masked"][name], checks["healthy"][name]
    assert masked_check.passed is False, masked_check.detail
    assert healthy_check.passed is True, healthy_check.detail
    # The masked model's gradient attacks achieve nothing: EOT-PGD leaves it near its clean accuracy.
    acc = reports["masked"].adaptive.accuracies
    assert acc["EOT-PGD"].mean > acc["Square (EOT)"].mean + 0.15
    assert checks["healthy"]["taps change between forwards"].passed is True
    assert checks["healthy"]["no NaN/inf"].passed is True


@pytest.mark.parametrize(
    ("square", "relation", "passed"),
    [
        (0.75, "Square is higher by 0.500", True),
        (0.0, "Square is lower by 0.250", False),
        (0.25, "the same", True),
    ],
)
def test_gradient_free_check_says_which_attack_is_stronger(square, relation, passed):
    per_image = {"EOT-PGD": [0.25] * 8, "APGD-CE (EOT)": [0.5] * 8, "Square (EOT)": [square] * 8}
    adaptive = ProtocolResult(
        "adaptive", {name: Accuracy.of(torch.tensor(p), "exact") for name, p in per_image.items()}
    )
    check = check_gradient_free(adaptive)
    gap = 0.25 - square  # the best gradient-based attack (EOT-PGD) minus Square
    assert check.passed is passed
    assert check.detail.startswith(
        f"Square (EOT) {square:.3f} vs best gradient-based EOT-PGD 0.250: {relation} "
        f"(gradient-based minus Square {gap:.3f} [{gap:.3f}, {gap:.3f}];"
    )


def test_descriptions_count_in_the_right_number():
    model = TinyDCSNet()
    budget = dataclasses.replace(get_budget("smoke"), repeats=1, eot_samples=1, exact_steps=1, pgd_steps=2)
    text = budget.describe()
    assert "paper x1 repeat, EOT-PGD 3 steps x 1 draw," in text and "exact PGD 1 step;" in text
    ctx = EvalContext(model, DrawRunner(model), 8 / 255, budget, 10, 0)
    labels = {name: label for name, (label, _attack, _worst) in adaptive_attacks(ctx).items()}
    assert labels["exact expectation"].startswith("PGD, 1 step of 2.5 eps, exact expectation over all")
    assert labels["EOT-PGD"] == "PGD on E[softmax] over 1 batched draw per step, 3 steps"
    scorer = Scorer(ctx.runner, max_sets=0, draws=1, seed=0)
    assert scorer.method == "sampled: 1 independent draw per image (exact scoring off)"
    scorer = Scorer(ctx.runner, max_sets=10, draws=16, seed=0)
    assert (
        scorer.method
        == "sampled: 16 independent draws per image (300 tap sets, more than the 10 scored exactly)"
    )


# -- a small real run -----------------------------------------------------------------------------


@pytest.mark.slow
def test_small_run_of_both_protocols_writes_valid_report(trained, fmnist_test, tmp_path):
    x, y = fmnist_test[0][:8], fmnist_test[1][:8]
    source = TinyDCSNet(dcs=False)
    source.load_state_dict(trained.state_dict())
    exact = dataclasses.replace(get_budget("smoke"), score_max_sets=300)  # smoke samples; score exactly
    report = evaluate(trained, _loader(x, y, batch=4), protocol="both", budget=exact, transfer_source=source)
    out = report.save(tmp_path / "eval")

    data = json.loads((out / "report.json").read_text())
    assert data["config"]["budget"]["name"] == "smoke" and data["config"]["budget"]["score_max_sets"] == 300
    assert data["config"]["examples"] == 8
    paper = data["paper"]["accuracies"]
    assert set(paper) == {"clean", "PGD-3", "AutoAttack", "CW", "MIFGSM", "DeepFool", "EOTPGD"}
    for acc in paper.values():
        assert 0 <= acc["mean"] <= 1 and acc["repeats"] == 2 and len(acc["per_repeat"]) == 2
        assert acc["low"] <= acc["mean"] <= acc["high"] and acc["scoring"] == "one fresh draw per image"
    adaptive = data["adaptive"]["accuracies"]
    expected = {
        "clean",
        "PGD (one frozen draw)",
        "EOT-PGD",
        "EOT-PGD (margin)",
        "APGD-CE (EOT)",
        "APGD-DLR (EOT)",
        "exact expectation",
        "Square (EOT)",
    }
    reference = set(ROWS.values()) if pyautoattack_version() else set()  # tests/test_reference_autoattack.py
    assert expected | {"transfer", "known taps", "AutoAttack rand", "worst case"} | reference == set(adaptive)
    for name, acc in adaptive.items():
        assert 0 <= acc["low"] <= acc["mean"] <= acc["high"] <= 1
        if name != "known taps":
            assert 0 <= acc["all_correct"] <= acc["mean"] <= 1 and acc["all_correct_k"] == 4
            assert acc["scoring"].startswith("exact over all C(25,2)=300 tap sets of mid")
    # Exact scoring: the worst case is the per-image minimum, never above any row it covers.
    worst = torch.tensor(adaptive["worst case"]["per_example"])
    for name in (expected | {"transfer", "AutoAttack rand"} | reference) - {"clean"}:
        assert (worst <= torch.tensor(adaptive[name]["per_example"])).all(), name
        assert adaptive["worst case"]["mean"] <= adaptive[name]["mean"]
        assert adaptive["worst case"]["all_correct"] <= adaptive[name]["all_correct"]
    assert {c["name"] for c in data["sanity"]} >= {"no NaN/inf", "taps change between forwards"}
    assert data["analyses"]["cosine"]["s"]["mean"] == pytest.approx(1.0, abs=1e-4)  # same taps, same gradient
    for curve in data["analyses"]["sweeps"].values():
        assert len(curve["paper"]) == len(curve["adaptive"]) == len(curve["values"])
        assert len(curve["paper_interval"]) == len(curve["adaptive_interval"]) == len(curve["values"])
    markdown = (out / "report.md").read_text()
    assert "paper protocol (attack and prediction use different taps)" in markdown
    assert "sweeps.png" in markdown and "budget=smoke" in markdown
    assert "| std over repeats | repeats | images | setting |" in markdown
    assert "| all-4-correct | images | setting |" in markdown
    assert (out / "sweeps.png").stat().st_size > 1000 and (out / "cosine.png").stat().st_size > 1000


class BatchNormNet(nn.Module):
    """Conv-BN -> (DCS or plain) conv-BN -> linear: a model whose training mode changes its outputs."""

    def __init__(self, dcs: bool = True) -> None:
        super().__init__()
        self.c0, self.b0 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.mid = dcspass.DCSConv2d(8, 16, 5, n=2, stride=2, padding=2) if dcs else nn.Conv2d(8, 16, 3, 2, 1)
        self.b1 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16 * 14 * 14, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.b0(self.c0(x)))
        return self.head(F.relu(self.b1(self.mid(h))).flatten(1))


def _trained_batchnorm_net(dcs: bool) -> nn.Module:
    torch.manual_seed(0)
    return _fit_one_epoch(BatchNormNet(dcs), images=1000)


def test_evaluation_leaves_the_model_in_eval_mode_and_its_buffers_untouched(fmnist_test):
    """Attacks that restore "the mode they found" on a wrapper must not switch the model to training:
    BatchNorm would then use batch statistics and overwrite its running statistics."""
    model = _trained_batchnorm_net(dcs=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = fmnist_test[0][:8], fmnist_test[1][:8]
    evaluate(model, _loader(x, y, batch=4), protocol="both", budget="smoke")
    assert not any(m.training for m in model.modules())
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed during the evaluation"


def test_worst_case_of_a_deterministic_model_is_the_per_example_minimum(fmnist_test):
    """Without randomness every verdict is exact, so the worst case must be the per-example minimum
    over the attacks it draws from: no worse than the strongest of them, and never above any."""
    model = _trained_batchnorm_net(dcs=False)
    x, y = fmnist_test[0][:8], fmnist_test[1][:8]  # the smoke budget's 8 images
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = evaluate(model, _loader(x, y), protocol="adaptive", budget="smoke", analyses=False)
    acc = report.adaptive.accuracies
    members = [name for name in acc if name not in ("clean", "known taps", "AutoAttack rand", "worst case")]
    per_example = torch.full((len(members), 8), float("inf"))
    for i, name in enumerate(members):
        values = torch.tensor(acc[name].per_example)
        per_example[i, : values.numel()] = values
    expected = per_example.min(0).values
    assert torch.equal(torch.tensor(acc["worst case"].per_example), expected)
    assert acc["worst case"].mean <= min(acc[name].mean for name in members)


def test_exact_scorer_equals_the_average_over_every_tap_set(trained, fmnist_test):
    x, y = fmnist_test[0][:6], fmnist_test[1][:6]
    scorer = Scorer(DrawRunner(trained), max_sets=300, draws=4, seed=0)
    assert scorer.exact and scorer.method == "exact over all C(25,2)=300 tap sets of mid"
    p = scorer(x, y)
    correct = torch.zeros(6, dtype=torch.float64)
    with torch.no_grad():
        for taps in itertools.combinations(range(25), 2):
            with dcspass.using_taps(trained, {"mid": torch.tensor(taps)}):
                correct += (trained(x).argmax(1) == y).double()
    torch.testing.assert_close(p, correct / 300)
    acc = Accuracy.of(p, scorer.method, k=3)
    assert acc.all_correct == pytest.approx(float((p**3).mean()))
    assert acc.low <= acc.mean <= acc.high


def test_sampled_scorer_draws_per_image_and_repeats_its_draws_for_every_input(trained, fmnist_test):
    """Above max_sets the scorer samples: independent draws per image (each image runs alone), and the
    same draws for every input scored on that image (common random numbers for the per-image minimum)."""
    calls = []
    runner = DrawRunner(trained)
    original = runner.first_layer.draw_taps

    def recording():
        taps = original()
        calls.append(tuple(taps.tolist()))
        return taps

    runner.first_layer.draw_taps = recording
    try:
        x, y = fmnist_test[0][:3], fmnist_test[1][:3]
        scorer = Scorer(runner, max_sets=10, draws=16, seed=5)
        assert not scorer.exact and scorer.method.startswith("sampled: 16 independent draws per image")
        torch.manual_seed(0)
        first = scorer(x, y)
        first_calls, calls[:] = list(calls), []
        second = scorer(x.clone(), y)
    finally:
        del runner.first_layer.draw_taps
    assert torch.equal(first, second) and first_calls == calls  # the same draws for a re-scored input
    per_image = [first_calls[16 * i : 16 * (i + 1)] for i in range(3)]
    assert len(first_calls) == 48 and per_image[0] != per_image[1] != per_image[2]


def test_cosine_comparison_matches_each_models_own_analysis(trained, fmnist_test, tmp_path):
    """Fig. 4a: each model's entry is its own gradient_cosine on the same images and seed; a model
    without DCS layers has identical gradients under every "draw" (similarity 1, no overlap split)."""
    x, y = fmnist_test[0][:8], fmnist_test[1][:8]
    plain = TinyDCSNet(dcs=False)
    plain.load_state_dict(trained.state_dict())
    results = compare_gradient_cosine({"DCS": trained, "plain": plain.eval()}, x, y, budget="smoke", seed=3)
    assert list(results) == ["DCS", "plain"]
    torch.manual_seed(3)
    own = gradient_cosine(_ctx(trained), x, y)
    assert results["DCS"]["cosine"]["overall"]["mean"] == pytest.approx(own["overall"]["mean"], abs=1e-6)
    assert results["DCS"]["cosine"]["s"]["mean"] == pytest.approx(1.0, abs=1e-4)  # same taps, same gradient
    assert results["plain"]["cosine"]["overall"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert results["plain"]["cosine"]["g"]["count"] == 0
    with torch.no_grad():
        plain_acc = float((plain(x).argmax(1) == y).float().mean())
    assert results["plain"]["clean"] == results["plain"]["clean_all_correct"] == pytest.approx(plain_acc)
    path = plot_cosine_comparison(results, tmp_path / "fig4a.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(EvaluationError, match="at least one model"):
        compare_gradient_cosine({}, x, y)


# -- bad input ------------------------------------------------------------------------------------


def test_bad_inputs_raise_evaluation_errors(trained, fmnist_test):
    x, y = fmnist_test[0][:4], fmnist_test[1][:4]
    with pytest.raises(EvaluationError, match="0-255"):
        evaluate(trained, _loader(x, y), eps=8)
    with pytest.raises(EvaluationError, match="no images"):
        evaluate(trained, [], budget="smoke")
    with pytest.raises(EvaluationError, match="classes"):
        evaluate(trained, _loader(x, y + 10), budget="smoke")
    with pytest.raises(EvaluationError, match=r"\[0, 1\]"):
        evaluate(trained, _loader(x * 255, y), budget="smoke")
    with pytest.raises(EvaluationError, match="budget"):
        evaluate(trained, _loader(x, y), budget="huge")


def test_model_without_dcs_runs_adaptive_attacks_with_a_warning(trained, fmnist_test):
    x, y = fmnist_test[0][:4], fmnist_test[1][:4]
    plain = TinyDCSNet(dcs=False)
    plain.load_state_dict(trained.state_dict())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = evaluate(plain, _loader(x, y), protocol="adaptive", budget="smoke", analyses=False)
    assert any("deterministic" in str(w.message) for w in caught)
    assert any("deterministic" in w for w in report.warnings)
    acc = report.adaptive.accuracies
    assert acc["exact expectation"].examples == 4 and acc["EOT-PGD"].examples == 4
    # Deterministic: every scoring draw agrees, so expected and all-K-correct accuracies coincide.
    assert acc["EOT-PGD"].all_correct == acc["EOT-PGD"].mean
