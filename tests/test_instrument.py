"""instrument: same outputs, captured taps per layer, tap control through the instrumented model."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import fx, nn

import dcspass
from dcspass import ConfigError
from dcspass.instrumentation import ModeSwitchingGraphs

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


class TrainBranch(nn.Module):
    """A strided conv whose output the forward doubles in train mode: a branch on ``self.training``
    outside any leaf module, which a traced graph would freeze."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = self.down(x)
        if self.training:
            y = y * 2
        return self.head(y.mean((2, 3)))


@pytest.mark.parametrize("traced_in", ["train", "eval"])
def test_train_and_eval_branches_follow_the_instrumented_models_mode(traced_in):
    torch.manual_seed(0)
    dcs = dcspass.transform(TrainBranch().train(traced_in == "train"), "downsample")
    probe = dcspass.instrument(dcs)
    assert isinstance(probe, ModeSwitchingGraphs)
    assert probe.training == (traced_in == "train") and dcs.training == probe.training  # dcs untouched
    assert [n for n, _ in dcspass.dcs_layers(probe)] == ["down"] and probe.down is dcs.down
    assert list(probe.state_dict()) == list(dcs.state_dict())
    assert [id(p) for p in probe.parameters()] == [id(p) for p in dcs.parameters()]
    x = torch.randn(2, 3, 8, 8)
    for training in (True, False, True):
        probe.train(training)
        dcs.train(training)
        y = probe(x)
        assert list(probe.captured_taps) == ["down"]
        with dcspass.using_taps(dcs, probe.captured_taps):
            torch.testing.assert_close(dcs(x), y, rtol=0, atol=0)


def test_models_without_mode_branches_stay_one_graph(dcs_resnet):
    assert isinstance(dcspass.instrument(dcs_resnet), fx.GraphModule)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(
            lambda: torchvision.models.efficientnet_b0(num_classes=10), id="torchvision-efficientnet"
        ),
        pytest.param(
            lambda: timm.create_model("convnext_atto", pretrained=False, num_classes=10, drop_path_rate=0.5),
            id="convnext-droppath",
        ),
    ],
)
def test_stochastic_depth_is_off_in_eval_mode_and_on_in_train_mode(build):
    """GSAT attacks the instrumented model in eval mode: stochastic depth traced in train mode must not
    stay on. Every tap (n = k*k) so the DCS layer adds no randomness of its own."""
    torch.manual_seed(0)
    dcs = dcspass.transform(build().train(), "index:1", n=25, k=5, check_bounds=False, init="embed")
    probe = dcspass.instrument(dcs)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        probe.eval()
        torch.testing.assert_close(probe(x), probe(x), rtol=0, atol=0)
        torch.testing.assert_close(probe(x), dcs.eval()(x), rtol=0, atol=0)
        probe.train()
        first = probe(x)
        assert any(not torch.equal(first, probe(x)) for _ in range(3)), (
            "stochastic depth is off in train mode"
        )
