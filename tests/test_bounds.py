"""The Eq. 12 bound checker: interval values, per-layer rejection before any rewrite, the escape hatch."""

from __future__ import annotations

import importlib

import pytest
import torch
import torchvision
from hypothesis import given
from hypothesis import strategies as st

import dcspass
from dcspass import BoundError, ConfigError, bounds


def test_interval_matches_the_design_values():
    assert bounds.interval(2, 5) == (0.225, 2.0)
    assert bounds.interval(2, 7) == pytest.approx((25 / 56, 2.0))
    assert bounds.interval(4, 5, eps_c=0.25) == pytest.approx((1 / 80 + 625 * (1 - 4) / 80, 4.0))
    assert bounds.interval(2, 5, eps_c=1.0)[1] == 4.0


@pytest.mark.parametrize("k", [3, 5, 7, 9])
def test_stride_one_is_empty_under_the_defaults(k):
    lower, upper = bounds.interval(1, k)
    assert lower > upper
    assert not bounds.admissible(1, 1, k)


@given(
    s=st.integers(1, 4),
    k=st.integers(1, 11),
    eps_paper=st.floats(0.01, 1000.0),
    size=st.integers(8, 512),
    eps_c=st.floats(0.05, 2.0),
)
def test_per_pixel_eps_l_is_the_papers_eps_l_over_n(s, k, eps_paper, size, eps_c):
    """Eq. 12 as printed: (S^2 - 2kS + k^2 + k^4 (1 - eps_l S^2 / N)) / (4kS) <= n <= S^2 eps_c."""
    n_pixels = size * size
    paper_lower = (s**2 - 2 * k * s + k**2 + k**4 * (1 - eps_paper * s**2 / n_pixels)) / (4 * k * s)
    lower, upper = bounds.interval(s, k, eps_c=eps_c, eps_l=eps_paper / n_pixels)
    assert lower == pytest.approx(paper_lower, rel=1e-9, abs=1e-9)
    assert upper == pytest.approx(s**2 * eps_c)


def test_lower_bound_falls_as_the_tolerance_grows():
    tight, loose = bounds.interval(2, 5, eps_l=0.1), bounds.interval(2, 5, eps_l=0.3)
    assert loose[0] < tight[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 5), "stride must be a positive int"),
        ((2, 2.5), "k must be a positive int"),
        ((2, 5, 0.0), "eps_c and eps_l must be positive"),
    ],
)
def test_bad_interval_arguments(args, message):
    with pytest.raises(ConfigError, match=message):
        bounds.interval(*args)


def test_check_names_the_layer_and_the_way_out():
    with pytest.raises(BoundError) as info:
        bounds.check("layer1.0.conv1", 2, (1, 1), 5)
    message = str(info.value)
    for part in ("'layer1.0.conv1'", "n=2", "S=1", "k=5", "interval is empty", "check_bounds=False"):
        assert part in message
    bounds.check("layer2.0.conv1", 2, (2, 2), 5)  # admissible: no error
    assert isinstance(info.value, ValueError)


@pytest.fixture(scope="module")
def resnet18():
    return torchvision.models.resnet18(weights=None).eval()


def test_transform_rejects_a_stride_one_layer(resnet18):
    with pytest.raises(BoundError, match=r"layer 'layer1\.0\.conv1': n=2 .* S=1, k=5 .*check_bounds=False"):
        dcspass.transform(resnet18, "index:2")


def test_transform_checks_every_layer_before_rewriting(resnet18, monkeypatch):
    rewrite_module = importlib.import_module("dcspass.rewrite")
    built = []
    real = rewrite_module.dcs_from_site
    monkeypatch.setattr(rewrite_module, "dcs_from_site", lambda *a, **kw: built.append(a) or real(*a, **kw))
    with pytest.raises(
        BoundError,
        match=r"n=3 is outside .*\[0\.4464, 2\].*Also outside their interval: "
        r"layer2\.0\.conv1, layer3\.0\.conv1, layer4\.0\.conv1",
    ):
        dcspass.transform(resnet18, "downsample", n=3)
    with pytest.raises(BoundError, match=r"layer2\.0\.conv2"):
        dcspass.transform(resnet18, "index:6,7")  # index 6 passes, index 7 (stride 1) does not
    assert built == []


def test_escape_hatch_and_custom_tolerances(resnet18):
    model = dcspass.transform(resnet18, "index:2", check_bounds=False)
    assert [n for n, _ in dcspass.dcs_layers(model)] == ["layer1.0.conv1"]
    model = dcspass.transform(resnet18, "index:6", n=4, eps_c=1.0)  # upper S^2 eps_c = 4
    assert model.layer2[0].conv1.n == 4
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
