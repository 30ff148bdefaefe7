"""transform: selection, naming, padding and weight embedding, F.conv2d call sites, the fallback."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import timm.layers as timm_layers
import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn

import dcspass
from dcspass import BoundError, ConfigError, DCSConv2d, DCSConv2dSame, ModelError, PolicyError
from dcspass.tracing import ModeSwitchingGraphs, model_name

DOWNSAMPLE_RN18 = ["conv1", "layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"]
# EdgeCases has an F.conv2d call site: selecting it makes the result a GraphModule, with a warning.
GRAPH_MODULE_RESULT = "ignore:dcspass.transform. the selected F.conv2d call site"


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def _dcs_names(model: nn.Module) -> list[str]:
    return [name for name, _ in dcspass.dcs_layers(model)]


class EdgeCases(nn.Module):
    """Every padding case the pass must get right, and an F.conv2d call site, in one small model."""

    def __init__(self) -> None:
        super().__init__()
        self.patchify = nn.Conv2d(3, 8, 4, stride=4)  # even kernel, ConvNeXt stem
        self.down = nn.Conv2d(8, 8, 2, stride=2)  # even kernel, ConvNeXt downsample
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.same = nn.Conv2d(8, 8, 4, padding="same")  # even kernel, odd total padding
        self.reflect = nn.Conv2d(8, 8, 3, stride=2, padding=1, padding_mode="reflect")
        self.wide = nn.Conv2d(8, 8, (1, 3), padding=(0, 1), groups=2)  # non-square kernel, groups
        self.anisotropic = nn.Conv2d(8, 8, 3, stride=(2, 1), padding=(1, 0), dilation=(1, 2))
        self.w = nn.Parameter(torch.randn(4, 8, 3, 3) * 0.1)
        self.b = nn.Parameter(torch.randn(4) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(self.anisotropic(torch.relu(self.patchify(x))))
        x = self.reflect(self.same(self.dilated(x)))
        return F.conv2d(self.wide(x), self.w, self.b, stride=1, padding=1)


def test_downsample_on_resnet18_keeps_names_and_state_dict_keys(resnet18):
    model = dcspass.transform(resnet18, "downsample")
    assert type(model) is torchvision.models.ResNet
    assert _dcs_names(model) == DOWNSAMPLE_RN18
    assert list(model.state_dict()) == list(resnet18.state_dict())
    assert model.state_dict()["layer2.0.conv1.weight"].shape == (128, 64, 5, 5)
    assert isinstance(model.layer2[0].conv1, DCSConv2d)  # containers keep their types


def test_result_is_the_models_class_and_hooks_on_its_containers_fire(resnet18):
    model = dcspass.transform(resnet18, "index:6")
    assert type(model) is torchvision.models.ResNet and model is not resnet18
    seen = []
    model.layer4.register_forward_hook(lambda module, args, out: seen.append(tuple(out.shape)))
    model.layer2.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    model(torch.randn(1, 3, 32, 32))
    assert seen == [(1, 64, 8, 8), (1, 512, 1, 1)]


def test_inplace_rewrites_the_model_itself():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    fc = model.fc.weight
    out = dcspass.transform(model, "index:6", inplace=True)
    assert out is model
    assert isinstance(model.layer2[0].conv1, DCSConv2d) and model.fc.weight is fc
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_a_bare_conv_comes_back_as_its_dcs_layer():
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1)
    before = copy.deepcopy(conv.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no GraphModule warning: the conv is swapped, not traced into
        layer = dcspass.transform(conv, "downsample")
    assert type(layer) is DCSConv2d
    assert (layer.in_channels, layer.out_channels, layer.kernel_size, layer.n) == (16, 32, 5, 2)
    assert layer.stride == (2, 2)
    x = torch.randn(2, 16, 12, 12)
    assert layer(x).shape == conv(x).shape == (2, 32, 6, 6)
    assert all(torch.equal(v, conv.state_dict()[key]) for key, v in before.items())  # untouched
    with pytest.raises(ConfigError, match="inplace=True cannot turn the Conv2d passed as the model"):
        dcspass.transform(conv, "downsample", inplace=True)
    with pytest.raises(PolicyError):
        dcspass.transform(nn.Conv2d(16, 32, 3, padding=1), "downsample")  # stride 1: nothing selected
    row = dcspass.plan(conv, "downsample").rows[0]  # plan says what transform does
    assert (row.name, row.kind, row.selected) == ("conv", "Conv2d", True)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
def test_inplace_checks_everything_before_changing_the_model(resnet18):
    with pytest.raises(BoundError, match=r"layer2\.0\.conv2"):
        dcspass.transform(resnet18, "index:6,7", inplace=True)  # index 6 passes, index 7 does not
    assert not _dcs_names(resnet18)
    edge = EdgeCases()
    with pytest.raises(ConfigError, match=r"inplace=True cannot rewrite .* conv2d \(F.conv2d on self.w\)"):
        dcspass.transform(edge, "name:down,conv2d", check_bounds=False, inplace=True)
    assert not _dcs_names(edge) and isinstance(edge.w, nn.Parameter)


def test_copy_save_load_and_state_dict_round_trips(resnet18, tmp_path):
    torch.manual_seed(0)
    model = dcspass.transform(resnet18, "downsample")
    x = torch.randn(1, 3, 32, 32)
    with dcspass.frozen_taps(model) as taps:
        expected = model(x)
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    rebuilt = dcspass.transform(torchvision.models.resnet18(weights=None).eval(), "downsample")
    rebuilt.load_state_dict(model.state_dict())
    for other in (copy.deepcopy(model), loaded, rebuilt):
        assert type(other) is torchvision.models.ResNet and other is not model
        with dcspass.using_taps(other, taps):
            torch.testing.assert_close(other(x), expected)
        with dcspass.frozen_taps(other) as drawn:
            assert drawn.keys() == taps.keys()


@pytest.mark.parametrize("api", ["transform", "plan", "instrument"])
@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            torchvision.models.resnet18,
            r"got the callable resnet18; call it to build the model: dcspass\.\w+\(",
        ),
        (torchvision.models.ResNet, "got the class ResNet; pass an instance"),
        ("resnet18", r"got the string 'resnet18'; build the model first, e\.g\. .*get_model\('resnet18'\)"),
        (
            {"conv1.weight": torch.zeros(1)},
            r"got a mapping \(dict\), which looks like a state dict; .*model\.load_state_dict\(state_dict\)",
        ),
        (None, "got None"),
    ],
)
def test_anything_but_a_module_is_refused(api, model, message):
    with pytest.raises(
        ModelError, match=rf"^dcspass\.{api} needs the model as an nn\.Module instance; {message}"
    ):
        getattr(dcspass, api)(model)
    assert issubclass(ModelError, TypeError) and issubclass(ModelError, dcspass.DCSError)


def test_embed_warns_only_when_a_draw_can_miss_the_embedded_kernel(resnet18):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dcspass.transform(resnet18, "index:6")  # fresh
        dcspass.transform(resnet18, "index:6", n=17, check_bounds=False, init="embed")  # ring of 16 < n
    with pytest.warns(UserWarning, match=r"n=16: .*layer2\.0\.conv1 \(3x3 in 5x5: "):
        dcspass.transform(resnet18, "index:6", n=16, check_bounds=False, init="embed")
    # The share of n=2 draws that land on the ring only: C(ring, 2) / C(k*k, 2).
    stem, down = (f"{100 * math.comb(81 - kk, 2) / math.comb(81, 2):.3g}%" for kk in (49, 9))
    with pytest.warns(
        UserWarning, match=rf"conv1 \(7x7 in 9x9: {stem} .*layer2\.0\.conv1 \(3x3 in 9x9: {down}"
    ):
        dcspass.transform(resnet18, "index:1,6", k=9, check_bounds=False, init="embed")


def test_user_model_untouched(resnet18):
    before = {k: v.clone() for k, v in resnet18.state_dict().items()}
    model = dcspass.transform(resnet18, "index:6", init="fresh")
    assert isinstance(resnet18.layer2[0].conv1, nn.Conv2d)
    for key, value in resnet18.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert model.layer2[0].conv1.weight.data_ptr() != resnet18.layer2[0].conv1.weight.data_ptr()
    assert model.fc.weight.data_ptr() != resnet18.fc.weight.data_ptr()


def test_index_6_is_layer2_0_conv1_and_resamples(resnet18):
    model = dcspass.transform(resnet18, "index:6")
    assert _dcs_names(model) == ["layer2.0.conv1"]
    layer = model.layer2[0].conv1
    assert (layer.kernel_size, layer.n, layer.padding) == (5, 2, (2, 2, 2, 2))
    x = torch.randn(2, 3, 32, 32)
    outputs = [model(x) for _ in range(4)]
    assert outputs[0].shape == (2, 1000)
    assert any(not torch.allclose(outputs[0], o) for o in outputs[1:])


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.filterwarnings(GRAPH_MODULE_RESULT)
def test_embed_with_all_taps_is_the_original_model_on_edge_cases():
    torch.manual_seed(0)
    original = EdgeCases().eval()
    x = torch.randn(2, 3, 80, 64)
    model = dcspass.transform(original, lambda name, conv: True, n=25, k=5, check_bounds=False, init="embed")
    assert sorted(_dcs_names(model)) == sorted(
        ["patchify", "down", "dilated", "same", "reflect", "wide", "anisotropic", "conv2d"]
    )
    torch.testing.assert_close(model(x), original(x), rtol=1e-5, atol=1e-5)
    # Odd sizes everywhere: 77x65 pixels.
    x = torch.randn(1, 3, 77, 65)
    torch.testing.assert_close(model(x), original(x), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.filterwarnings(GRAPH_MODULE_RESULT)
def test_every_replaced_layer_keeps_its_output_shape():
    torch.manual_seed(0)
    original = EdgeCases()
    model = dcspass.transform(original, lambda name, conv: True, n=3, k=7, check_bounds=False, init="fresh")
    shapes = {}
    for name, module in list(original.named_children()):
        module.register_forward_hook(lambda m, a, out, name=name: shapes.__setitem__(name, out.shape))
    for name, module in dcspass.dcs_layers(model):
        if hasattr(original, name):  # conv modules; the F.conv2d site makes the output
            module.register_forward_hook(
                lambda m, a, out, name=name: shapes.__setitem__(name + "/dcs", out.shape)
            )
    x = torch.randn(1, 3, 77, 65)
    assert model(x).shape == original(x).shape
    for name in ("patchify", "down", "dilated", "same", "reflect", "wide", "anisotropic"):
        assert shapes[name + "/dcs"] == shapes[name], name


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
def test_f_conv2d_call_site_becomes_a_dcs_submodule():
    torch.manual_seed(0)
    original = EdgeCases()
    with pytest.warns(
        UserWarning, match=r"call site\(s\) conv2d \(F.conv2d on self.w\).*GraphModule instead of EdgeCases"
    ):
        model = dcspass.transform(original, "name:conv2d", n=25, k=5, check_bounds=False, init="embed")
    assert isinstance(model, fx.GraphModule)
    assert _dcs_names(model) == ["conv2d"]
    assert "w" not in dict(model.named_parameters())  # the old weight is gone, the DCS layer owns it
    layer = model.conv2d
    torch.testing.assert_close(layer.weight[:, :, 1:4, 1:4], original.w)
    torch.testing.assert_close(layer.bias, original.b)
    assert "self.conv2d(" in model.code
    with dcspass.frozen_taps(model) as taps:
        assert set(taps) == {"conv2d"}


class CallThenDropout(nn.Module):
    """A strided F.conv2d call site, then F.dropout(..., self.training): a branch a trace freezes.
    ``twice_in_train`` calls the same weight a second time in train mode only."""

    def __init__(self, twice_in_train: bool = False) -> None:
        super().__init__()
        self.twice_in_train = twice_in_train
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.w = nn.Parameter(torch.randn(8, 8, 3, 3) * 0.1)
        self.head = nn.Linear(8, 4)
        self.register_buffer("shift", torch.zeros(1, 3, 1, 1))  # a tensor the root itself owns

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x - self.shift))
        y = F.conv2d(x, self.w, None, 2, 1)
        if self.training and self.twice_in_train:
            y = y + F.conv2d(x, self.w, None, 2, 1)
        return self.head(F.dropout(y, 0.5, self.training).mean((2, 3)))


@pytest.mark.parametrize("transformed_in_train", [True, False])
def test_f_conv2d_call_site_result_follows_train_and_eval(transformed_in_train):
    torch.manual_seed(0)
    original = CallThenDropout().train(transformed_in_train)
    with pytest.warns(UserWarning, match=r"call site\(s\) conv2d .*ModeSwitchingGraphs"):
        model = dcspass.transform(original, "downsample", n=2)
    assert isinstance(model, ModeSwitchingGraphs)
    assert model_name(model) == "CallThenDropout (a graph per train/eval mode)"  # as reports name it
    assert model.training is transformed_in_train
    assert _dcs_names(model) == ["conv2d"]
    assert sorted(model.state_dict()) == sorted(
        ["stem.weight", "stem.bias", "conv2d.weight", "head.weight", "head.bias", "shift"]
    )
    shared = {id(p) for p in model.parameters()}
    assert all({id(p) for p in gm.parameters()} == shared for gm in model.graphs.values())
    x = torch.randn(4, 3, 16, 16)

    def by_hand(training: bool) -> torch.Tensor:  # the model's forward, the DCS layer for the call
        y = model.conv2d(torch.relu(model.stem(x - model.shift)))
        return model.head(F.dropout(y, 0.5, training).mean((2, 3)))

    with dcspass.frozen_taps(model):  # the draw stays fixed; dropout is the only randomness left
        for training in (True, False, True):
            model.train(training)
            torch.manual_seed(1)
            got = model(x)
            torch.manual_seed(1)
            torch.testing.assert_close(got, by_hand(training), msg=f"training={training}")
        model.eval()
        torch.testing.assert_close(model(x), model(x))  # no dropout in eval
        model.train()
        assert not torch.allclose(model(x), model(x))  # dropout in train
    inst = dcspass.instrument(model.eval())  # what GSAT runs its attack on
    assert isinstance(inst, ModeSwitchingGraphs)
    recorded = inst(x)
    with dcspass.using_taps(model, dict(inst.captured_taps)):
        torch.testing.assert_close(model(x), recorded)
    twin = copy.deepcopy(model)  # as EMA and checkpoint code copy models: the graphs follow the copy
    assert twin.graphs[True].conv2d is twin.conv2d is twin.graphs[False].conv2d is not model.conv2d
    model.double()  # new tensors in the root's own buffer slot: each graph must read them
    assert all(gm.shift is model.shift and gm.shift.dtype == torch.float64 for gm in model.graphs.values())
    for training in (True, False):
        assert model.train(training)(x.double()).dtype == torch.float64


def test_f_conv2d_call_site_warning_names_the_hooks_the_graph_drops():
    model = nn.Sequential(CallThenDropout())
    model.register_forward_hook(lambda *args: None)
    model[0].register_forward_pre_hook(lambda *args: None)  # a container: the graph inlines its forward
    model[0].stem.register_forward_hook(lambda *args: None)  # a leaf: the graph calls it, the hook runs
    with pytest.warns(UserWarning, match=r"The hooks on the model itself, 0 will not run") as caught:
        dcspass.transform(model, "downsample", n=2)
    assert "0.stem" not in str(caught[0].message)


def test_f_conv2d_call_site_called_differently_per_mode_keeps_the_trace_mode():
    torch.manual_seed(0)
    message = (
        r"different number of times in train and in eval mode, so the result is its train-mode trace alone"
    )
    with pytest.warns(UserWarning, match=message):
        model = dcspass.transform(CallThenDropout(twice_in_train=True), "downsample", n=2)
    assert isinstance(model, fx.GraphModule)
    assert _dcs_names(model) == ["conv2d", "conv2d_1"]
    assert model.code.count("dropout(") == 1 and "training = True" in model.code


def test_embed_and_fresh_initialisation(resnet18):
    with pytest.warns(
        UserWarning, match=r"init='embed' with n=2.*layer2.0.conv1 \(3x3 in 5x5: 40% of draws\)"
    ):
        embedded = dcspass.transform(resnet18, "index:6", init="embed").layer2[0].conv1.weight
    original = resnet18.layer2[0].conv1.weight
    torch.testing.assert_close(embedded[:, :, 1:4, 1:4], original)
    ring = embedded.clone()
    ring[:, :, 1:4, 1:4] = 0
    assert ring.abs().max() == 0
    fresh = dcspass.transform(resnet18, "index:6").layer2[0].conv1.weight  # "fresh" is the default
    assert fresh.shape == (128, 64, 5, 5)
    assert fresh[:, :, 0].abs().max() > 0  # the ring is initialised too
    assert not torch.allclose(fresh[:, :, 1:4, 1:4], original)


@pytest.mark.parametrize("init", ["fresh", "embed"])
def test_channels_last_model_keeps_channels_last_dcs_weights(init):
    # A 1x1 kernel in channels_last is contiguous too: its layout shows only in the strides.
    # n=25 uses every tap: no draw reads only the zero ring, so init="embed" does not warn.
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.Conv2d(8, 8, 1, stride=2), nn.Conv2d(8, 4, 3))
    policy = dcspass.policies.Index(1, 2)
    plain = dcspass.transform(model, policy, n=25, init=init, check_bounds=False)
    last = dcspass.transform(
        copy.deepcopy(model).to(memory_format=torch.channels_last),
        policy,
        n=25,
        init=init,
        check_bounds=False,
    )
    for name in ("0", "1"):
        w_plain, w_last = plain.get_submodule(name).weight, last.get_submodule(name).weight
        assert w_plain.is_contiguous() and not w_plain.is_contiguous(memory_format=torch.channels_last)
        assert w_last.is_contiguous(memory_format=torch.channels_last) and not w_last.is_contiguous()
        if init == "embed":
            torch.testing.assert_close(w_last, w_plain, rtol=0, atol=0)
    assert last.get_submodule("2").weight.is_contiguous(memory_format=torch.channels_last)  # untouched
    last.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 17, 17)
    with dcspass.frozen_taps(plain) as taps, dcspass.using_taps(last, taps):
        torch.testing.assert_close(last(x.to(memory_format=torch.channels_last)), plain(x))
        last(x).sum().backward()
    assert last.get_submodule("0").weight.grad.shape == (8, 3, 5, 5)


def test_k_default_and_explicit(resnet18):
    model = dcspass.transform(resnet18, "downsample", k=None)
    assert model.conv1.kernel_size == 7  # max(5, 7)
    assert model.layer2[0].conv1.kernel_size == 5  # max(5, 3)
    model = dcspass.transform(resnet18, "index:6", k=7, check_bounds=False)
    assert model.layer2[0].conv1.kernel_size == 7
    assert model.layer2[0].conv1.padding == (3, 3, 3, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"policy": "index:1", "k": 5}, "k=5 is smaller than its 7x7 kernel"),
        ({"policy": "index:6", "n": 30, "check_bounds": False}, r"n=30 exceeds the k\*k=25 taps"),
        ({"policy": "index:6", "n": 0}, "n must be a positive int"),
        ({"policy": "index:6", "init": "zeros"}, "init must be 'fresh' or 'embed'"),
        ({"policy": "index:6", "k": 0}, "k must be a positive int"),
    ],
)
def test_bad_arguments_raise_config_error(resnet18, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        dcspass.transform(resnet18, **kwargs)


def test_unknown_policy_raises_before_anything_happens(resnet18):
    with pytest.raises(PolicyError, match="unknown policy 'strided'"):
        dcspass.transform(resnet18, "strided")


def test_timm_conv2d_same_keeps_tf_same_padding():
    torch.manual_seed(0)
    original = nn.Sequential(
        timm_layers.Conv2dSame(3, 8, 3, stride=2),
        nn.ReLU(),
        timm_layers.Conv2dSame(8, 8, 4, stride=3, dilation=1),
        timm_layers.Conv2dSame(8, 4, 3, stride=1, dilation=2),
    )
    model = dcspass.transform(original, lambda name, conv: True, n=49, k=7, check_bounds=False, init="embed")
    assert all(isinstance(layer, DCSConv2dSame) for _, layer in dcspass.dcs_layers(model))
    for hw in ((77, 65), (64, 64), (31, 30)):
        x = torch.randn(1, 3, *hw)
        torch.testing.assert_close(model(x), original(x), rtol=1e-5, atol=1e-5)


def test_std_conv_is_never_selected_and_the_match_is_reported():
    original = nn.Sequential(timm_layers.StdConv2d(3, 8, 3, stride=2), nn.Conv2d(8, 8, 3, stride=2))
    with pytest.warns(UserWarning, match=r"non-convertible convs.*0 \(StdConv2d overrides forward"):
        model = dcspass.transform(original, "downsample")
    assert _dcs_names(model) == ["1"]
    assert type(getattr(model, "0")) is timm_layers.StdConv2d
    with pytest.raises(PolicyError, match="matches only non-convertible convs"):
        dcspass.transform(original, "index:1")


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace this."""

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.a = nn.Conv2d(3, 3, 3, padding=1)  # registered second, runs first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        if x.sum() > 0:
            x = -x
        return self.b(x)


def test_untraceable_model_falls_back_to_module_swap_with_a_warning():
    torch.manual_seed(0)
    original = Untraceable()
    with pytest.warns(UserWarning, match=r"torch.fx cannot trace Untraceable \(TraceError: .*dry run"):
        model = dcspass.transform(original, "index:2")  # index from the dry run: b runs second
    assert type(model) is Untraceable and model is not original
    assert _dcs_names(model) == ["b"]
    assert isinstance(original.b, nn.Conv2d)
    assert model(torch.randn(2, 3, 9, 11)).shape == original(torch.randn(2, 3, 9, 11)).shape
    with pytest.warns(UserWarning, match="forward-hook dry run"):
        full = dcspass.transform(
            original,
            "index:1,2",
            n=25,
            check_bounds=False,
            init="embed",
            example_inputs=torch.ones(1, 3, 8, 8),
        )
    x = torch.randn(1, 3, 77, 65)
    torch.testing.assert_close(full(x), original(x), rtol=1e-5, atol=1e-5)


def test_fallback_dry_run_failure_asks_for_example_inputs():
    class NeedsTwo(Untraceable):
        def forward(self, x, y):
            return super().forward(x + y)

    with warnings.catch_warnings(), pytest.raises(ConfigError, match="pass example_inputs="):
        warnings.simplefilter("ignore")
        dcspass.transform(NeedsTwo(), "downsample")


def test_gradients_match_with_in_place_relu_after_a_dcs_layer():
    """conv -> ReLU(inplace=True) (VGG, AlexNet): the DCS output must accept in-place ops under autograd."""
    torch.manual_seed(0)
    original = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 4, 3, stride=2, padding=1),
        nn.ReLU(inplace=True),
    )
    model = dcspass.transform(original, lambda name, conv: True, n=25, k=5, check_bounds=False, init="embed")
    x = torch.randn(2, 3, 9, 11, requires_grad=True)
    model(x).square().sum().backward()
    got = (x.grad.clone(), getattr(model, "2").weight.grad[:, :, 1:4, 1:4].clone())
    x.grad = None
    original(x).square().sum().backward()
    torch.testing.assert_close(got[0], x.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], original[2].weight.grad, rtol=1e-5, atol=1e-5)
