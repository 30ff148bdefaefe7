"""instrument: same outputs, captured taps per layer, tap control through the instrumented model."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import dcspass
from dcspass import ConfigError

LAYERS = ["conv1", "layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"]


@pytest.fixture(scope="module")
def dcs_resnet() -> nn.Module:
    torch.manual_seed(0)
    return dcspass.transform(torchvision.models.resnet18(weights=None, num_classes=10).eval(), "downsample")


def test_captured_taps_reproduce_the_forward(dcs_resnet):
    model = dcspass.instrument(dcs_resnet)
    x = torch.randn(2, 3, 32, 32)
    y = model(x)
    taps = model.captured_taps
    assert list(taps) == LAYERS
    for name, layer in dcspass.dcs_layers(dcs_resnet):
        assert taps[name].dtype == torch.long and taps[name].shape == (layer.n,)
    with dcspass.using_taps(dcs_resnet, taps):
        torch.testing.assert_close(dcs_resnet(x), y, rtol=0, atol=0)
    first = {k: v.clone() for k, v in taps.items()}
    model(x)
    assert any(not torch.equal(first[k], model.captured_taps[k]) for k in LAYERS)  # fresh each forward


def test_same_names_and_shared_parameters(dcs_resnet):
    model = dcspass.instrument(dcs_resnet)
    assert [n for n, _ in dcspass.dcs_layers(model)] == LAYERS
    assert model.layer2[0].conv1 is dcs_resnet.layer2[0].conv1
    assert list(model.state_dict()) == list(dcs_resnet.state_dict())


def test_frozen_taps_on_the_instrumented_model_are_the_captured_ones(dcs_resnet):
    model = dcspass.instrument(dcs_resnet)
    x = torch.randn(1, 3, 32, 32)
    with dcspass.frozen_taps(model) as frozen:
        y1 = model(x)
        captured = {k: v.tolist() for k, v in model.captured_taps.items()}
        assert captured == {k: v.tolist() for k, v in frozen.items()}
        torch.testing.assert_close(model(x), y1, rtol=0, atol=0)


def test_excluding_captured_taps_gives_disjoint_draws(dcs_resnet):
    """The GSAT step: attack taps X^s recorded, training draws avoid them."""
    model = dcspass.instrument(dcs_resnet)
    x = torch.randn(1, 3, 32, 32)
    with dcspass.frozen_taps(model):
        model(x)
    attack_taps = dict(model.captured_taps)
    with dcspass.excluding_taps(model, attack_taps):
        for _ in range(5):
            model(x)
            for name, taps in model.captured_taps.items():
                assert not set(taps.tolist()) & set(attack_taps[name].tolist()), name


def test_gradients_flow_through_the_instrumented_model(dcs_resnet):
    model = dcspass.instrument(dcs_resnet)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    model(x).sum().backward()
    grad = dcs_resnet.layer2[0].conv1.weight.grad
    assert x.grad is not None and grad is not None
    used = set(model.captured_taps["layer2.0.conv1"].tolist())
    touched = {int(t) for t in torch.nonzero(grad.abs().sum((0, 1)).flatten()).flatten()}
    assert touched <= used
    dcs_resnet.zero_grad(set_to_none=True)


def test_errors():
    with pytest.raises(ConfigError, match="has no DCSConv2d layer; transform it first"):
        dcspass.instrument(nn.Sequential(nn.Conv2d(3, 3, 3)))


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1))

    def forward(self, x):
        x = self.a(x)
        return self.b(x if x.sum() > 0 else -x)


def test_untraceable_models_are_instrumented_with_hooks():
    with pytest.warns(UserWarning, match="cannot trace"):
        dcs = dcspass.transform(Untraceable(), "downsample")
    with pytest.warns(UserWarning, match=r"torch\.fx cannot trace Untraceable .*hooks on the DCS layers"):
        model = dcspass.instrument(dcs)
    assert model.b[0] is dcs.b[0] and [n for n, _ in dcspass.dcs_layers(model)] == ["a", "b.0"]
    x = torch.randn(1, 3, 16, 16)
    y = model(x)
    taps = dict(model.captured_taps)
    assert set(taps) == {"a", "b.0"} and dcs.a.fixed_taps is None  # the draw is not left frozen
    with dcspass.using_taps(dcs, taps):
        torch.testing.assert_close(dcs(x), y, rtol=0, atol=0)
    dcs(x)  # calls through the original model are not recorded
    assert all(torch.equal(model.captured_taps[k], taps[k]) for k in taps)
    with dcspass.frozen_taps(model) as frozen:
        model(x)
        assert all(torch.equal(model.captured_taps[k], frozen[k]) for k in frozen)
    with dcspass.excluding_taps(model, taps):
        for _ in range(5):
            model(x)
            assert all(not set(model.captured_taps[k].tolist()) & set(taps[k].tolist()) for k in taps)


def test_f_conv2d_sites_are_captured_too():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.w = nn.Parameter(torch.randn(4, 4, 3, 3))

        def forward(self, x):
            return torch.nn.functional.conv2d(self.stem(x), self.w, None, 2, 1)

    with pytest.warns(UserWarning, match="the result is a torch.fx GraphModule"):
        dcs = dcspass.transform(Functional(), "downsample")
    model = dcspass.instrument(dcs)
    x = torch.randn(1, 3, 16, 16)
    with dcspass.frozen_taps(model) as frozen:
        y = model(x)
    assert set(model.captured_taps) == {"stem", "conv2d"}
    assert all(torch.equal(model.captured_taps[k], frozen[k]) for k in frozen)
    with dcspass.using_taps(dcs, model.captured_taps):
        torch.testing.assert_close(dcs(x), y, rtol=0, atol=0)
