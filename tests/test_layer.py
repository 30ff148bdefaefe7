"""DCSConv2d and the tap draw: semantics, uniformity, seeds, tap control, errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chisquare
from torch import nn

import dcspass
from dcspass import ConfigError, DCSConv2d, TapError, excluding_taps, frozen_taps, using_taps

from ._reference import masked_conv2d


def test_forward_is_masked_conv_with_the_taps_it_reports():
    layer = DCSConv2d(4, 6, 5, n=3, stride=2, padding=2)
    x = torch.randn(2, 4, 11, 9)
    y, taps = layer.forward_with_taps(x)
    assert taps.shape == (3,) and taps.unique().numel() == 3
    torch.testing.assert_close(y, masked_conv2d(x, layer.weight, layer.bias, taps, 2, 2))


def test_full_n_equals_nn_conv2d_with_same_weights():
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, dilation=1, padding_mode="reflect")
    layer = DCSConv2d(3, 5, 3, n=9, stride=2, padding=1, padding_mode="reflect")
    layer.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 13, 10)
    torch.testing.assert_close(layer(x), conv(x))


def test_same_padding_keeps_shape_for_even_kernel():
    layer = DCSConv2d(2, 3, 4, n=16, padding="same", dilation=2)
    conv = nn.Conv2d(2, 3, 4, padding="same", dilation=2)
    conv.load_state_dict(layer.state_dict())
    x = torch.randn(1, 2, 9, 8)
    torch.testing.assert_close(layer(x), conv(x))


def test_taps_resample_every_forward_in_train_and_eval():
    layer = DCSConv2d(2, 2, 5, n=2)
    for mode in (layer.train, layer.eval):
        mode()
        draws = {tuple(layer.forward_with_taps(torch.randn(1, 2, 6, 6))[1].tolist()) for _ in range(30)}
        assert len(draws) > 20  # 300 possible sets: repeats are rare


def test_taps_are_uniform_over_positions_and_pairs():
    """Chi-square: each of the 25 positions, and each of the 300 pairs, is equally likely."""
    torch.manual_seed(1234)
    draws = torch.stack([dcspass.sample_taps(25, 2) for _ in range(30000)])
    assert (draws[:, 0] < draws[:, 1]).all()  # distinct and sorted
    positions = torch.bincount(draws.flatten(), minlength=25).numpy()
    assert chisquare(positions).pvalue > 1e-4
    pair_index = {p: i for i, p in enumerate(itertools.combinations(range(25), 2))}
    pairs = torch.bincount(torch.tensor([pair_index[tuple(d)] for d in draws.tolist()]), minlength=300)
    assert chisquare(pairs.numpy()).pvalue > 1e-4


def test_exclusion_is_uniform_over_the_complement():
    torch.manual_seed(7)
    excluded = torch.zeros(25, dtype=torch.bool)
    excluded[[0, 6, 12, 18, 24]] = True
    draws = torch.stack([dcspass.sample_taps(25, 3, excluded) for _ in range(20000)]).flatten()
    assert not excluded[draws].any()
    counts = torch.bincount(draws, minlength=25)[~excluded].numpy()
    assert chisquare(counts).pvalue > 1e-4


def test_reproducible_under_manual_seed():
    layer = DCSConv2d(3, 4, 5, n=2, padding=2)
    x = torch.randn(2, 3, 8, 8)
    torch.manual_seed(0)
    a = [layer(x) for _ in range(3)]
    torch.manual_seed(0)
    b = [layer(x) for _ in range(3)]
    for ya, yb in zip(a, b, strict=True):
        assert torch.equal(ya, yb)
    assert not torch.equal(a[0], a[1]) or not torch.equal(a[1], a[2])


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = DCSConv2d(2, 4, 5, n=2, stride=2, padding=2)
        self.b = nn.Sequential(nn.ReLU(), DCSConv2d(4, 3, 3, n=4, padding=1))

    def forward(self, x):
        return self.b(self.a(x))


def test_frozen_taps_hold_for_the_context_and_nest():
    model = TwoLayers()
    x = torch.randn(1, 2, 8, 8)
    with frozen_taps(model) as taps:
        assert set(taps) == {"a", "b.1"}
        y1, y2 = model(x), model(x)
        assert torch.equal(y1, y2)
        with frozen_taps(model) as inner:
            assert all(torch.equal(inner[k], taps[k]) for k in taps)  # already frozen: kept
    assert model.a.fixed_taps is None and model.b[1].fixed_taps is None


def test_excluding_taps_never_draws_excluded_and_unions_when_nested():
    layer = DCSConv2d(1, 1, 3, n=2)
    with excluding_taps(layer, torch.tensor([0, 1, 2])):
        with excluding_taps(layer, torch.tensor([3, 4])):
            for _ in range(50):
                assert set(layer.forward_with_taps(torch.randn(1, 1, 4, 4))[1].tolist()) <= {5, 6, 7, 8}
        seen = set()
        for _ in range(200):
            seen |= set(layer.forward_with_taps(torch.randn(1, 1, 4, 4))[1].tolist())
        assert seen == set(range(3, 9))
    assert layer.excluded_mask is None


def test_frozen_draw_honours_exclusion():
    model = TwoLayers()
    with excluding_taps(model, {"a": torch.arange(23)}), frozen_taps(model) as taps:
        assert taps["a"].tolist() == [23, 24]


def test_using_taps_sets_exact_taps():
    model = TwoLayers()
    x = torch.randn(1, 2, 8, 8)
    with using_taps(model, {"a": torch.tensor([4, 9]), "b.1": torch.tensor([0, 1, 2, 3])}):
        y, taps = model.a.forward_with_taps(x)
        assert taps.tolist() == [4, 9]
        torch.testing.assert_close(y, masked_conv2d(x, model.a.weight, model.a.bias, taps, 2, 2))


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_forward_goes_through_dcspass_functional(monkeypatch, padding_mode):
    """DCSConv2d -> dcspass.functional -> the op, skipping the tap check the functional's public entry
    makes (the layer drew its taps itself); the result is F.conv2d with the weight masked to the taps."""
    import dcspass.functional as functional

    entered, checked = [], []
    fast_path, check = functional._dcs_conv2d_checked_geometry, functional.validate_taps
    monkeypatch.setattr(
        functional,
        "_dcs_conv2d_checked_geometry",
        lambda *a, **kw: entered.append(a[3]) or fast_path(*a, **kw),
    )
    monkeypatch.setattr(functional, "validate_taps", lambda *a, **kw: checked.append(a[0]) or check(*a, **kw))
    layer = DCSConv2d(4, 6, 5, n=3, stride=2, padding=(1, 2, 2, 1), groups=2, padding_mode=padding_mode)
    x = torch.randn(2, 4, 11, 9)
    y, taps = layer.forward_with_taps(x)
    assert len(entered) == 1 and torch.equal(entered[0], taps) and checked == []
    mask = torch.zeros(25).index_fill_(0, taps, 1.0).view(5, 5)
    mode = "constant" if padding_mode == "zeros" else padding_mode
    expected = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, (1, 2, 2, 1), mode=mode), layer.weight * mask, layer.bias, 2, groups=2
    )
    torch.testing.assert_close(y, expected)
    # The public functional is the same path, with the taps checked.
    out = dcspass.dcs_conv2d(x, layer.weight, layer.bias, taps, 2, (1, 2, 2, 1), groups=2)
    assert len(entered) == 2 and len(checked) == 1
    if padding_mode == "zeros":
        torch.testing.assert_close(out, y)


def test_forward_still_checks_the_input():
    layer = DCSConv2d(4, 6, 5, n=2, padding=2)
    with pytest.raises(ConfigError, match="input has 3 channels but weight"):
        layer(torch.randn(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="smaller than the dilated kernel"):
        DCSConv2d(4, 6, 5, n=2)(torch.randn(1, 4, 3, 3))


def test_state_dict_is_that_of_a_conv():
    layer = DCSConv2d(3, 4, 5, n=2)
    assert set(layer.state_dict()) == {"weight", "bias"}
    assert layer.weight.shape == (4, 3, 5, 5)
    assert "k=5, n=2, stride=(1, 1)" in repr(layer)


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(n=0), r"n must be a positive int \(taps per forward\), got n=0"),
        (dict(n=26), r"n=26 exceeds the k\*k=25 taps of a 5x5 kernel"),
        (dict(n=2.0), "n must be a positive int"),
        (dict(kernel_size=(5, 3)), "square kernel"),
        (dict(groups=4), "groups=4 must divide"),
        (dict(padding="valid"), "only 'same'"),
        (dict(padding="same", stride=2), "only with stride 1"),
        (dict(padding_mode="mirror"), "padding_mode"),
        (dict(stride=0), "stride and dilation"),
    ],
)
def test_bad_layer_arguments(kwargs, message):
    args = dict(in_channels=2, out_channels=6, kernel_size=5, n=2)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        DCSConv2d(**args)


def test_excluding_too_many_taps_is_an_error_naming_the_layer():
    model = TwoLayers()
    with (
        pytest.raises(
            TapError, match=r"excluding_taps\[b\.1\]: excluding 6 of 9 taps leaves 3, fewer than n=4"
        ),
        excluding_taps(model, {"b.1": torch.arange(4)}),
        excluding_taps(model, {"b.1": torch.arange(2, 6)}),
    ):
        pass
    assert model.b[1].excluded_mask is None  # the outer context was unwound


def test_tap_control_errors():
    model = TwoLayers()
    with pytest.raises(TapError, match="no DCSConv2d layer"), frozen_taps(nn.Conv2d(1, 1, 3)):
        pass
    with pytest.raises(TapError, match=r"2 DCS layers \(a, b\.1\)"), excluding_taps(model, torch.tensor([0])):
        pass
    with (
        pytest.raises(TapError, match=r"no DCS layer named \['c'\]"),
        using_taps(model, {"c": torch.tensor([0])}),
    ):
        pass
    with (
        pytest.raises(TapError, match=r"using_taps\[a\]: expected 2 taps"),
        using_taps(model, {"a": torch.tensor([0, 1, 2])}),
    ):
        pass
