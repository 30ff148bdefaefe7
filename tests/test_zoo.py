"""Generality: the torchvision classification zoo and a set of timm CNNs (built without weights).

For each model: ``transform(model, "downsample")`` returns the model's own class, one forward, every
replaced layer keeps its output shape, and the logits keep theirs; timm's own methods still work.
Then ``n = k*k`` with ``init="embed"`` reproduces real models at an odd input size (77x65), where
padding mistakes show: even kernels (ConvNeXt), TF-"SAME" padding (timm's tf_ models), dilation
(ResNet-50 with dilated layer4). Stochastic depth follows train/eval after the transform. Inputs are
small to keep this fast."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
import torchattacks
import torchvision
from torch import nn

import dcspass
from dcspass import PolicyError

# resnet18 and convnext_tiny are covered by test_embed_with_all_taps_reproduces_real_models below (same
# "downsample" selection, output checked against the original), vgg11 by its own test.
TORCHVISION = [
    "resnext50_32x4d",
    "wide_resnet50_2",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "densenet121",
    "regnet_y_400mf",
    "shufflenet_v2_x0_5",
    "mnasnet0_5",
    "squeezenet1_0",
]
# tf_efficientnet_b0 (Conv2dSame everywhere) is covered by the embed test below.
TIMM = ["mobilenetv3_small_100", "regnety_002", "convnext_atto", "mixnet_s", "repvgg_a0", "ghostnet_050"]


def _build(source: str, name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    if source == "torchvision":
        model = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)
    else:
        model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    return model.eval()


def _output_shapes(model: nn.Module, names: list[str], x: torch.Tensor) -> tuple[dict[str, tuple], tuple]:
    shapes: dict[str, tuple] = {}

    def record(name: str):
        def hook(module, args, out) -> None:  # returns None: the output is left as it is
            shapes.setdefault(name, tuple(out.shape))

        return hook

    handles = [model.get_submodule(name).register_forward_hook(record(name)) for name in names]
    with torch.no_grad():
        logits = model(x)
    for h in handles:
        h.remove()
    return shapes, tuple(logits.shape)


def _check_downsample(model: nn.Module, size: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # these models trace: no fallback warning expected
        dcs = dcspass.transform(model, "downsample")
    assert isinstance(dcs, type(model)) and type(dcs) is type(model)
    names = [name for name, _ in dcspass.dcs_layers(dcs)]
    assert names, "downsample selected nothing"
    x = torch.randn(1, 3, size, size)
    before, logits_before = _output_shapes(model, names, x)
    after, logits_after = _output_shapes(dcs, names, x)
    assert set(after) == set(names)
    assert after == before
    assert logits_after == logits_before == (1, 10)
    return dcs


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_zoo(name):
    _check_downsample(_build("torchvision", name), 32)


@pytest.mark.parametrize("name", TIMM)
def test_timm_zoo(name):
    model = _build("timm", name)
    dcs = _check_downsample(model, 32)
    # timm's own API survives the transform: features, classifier reset, the pretrained config.
    assert dcs.pretrained_cfg == model.pretrained_cfg and dcs.pretrained_cfg["architecture"] == name
    dcs.reset_classifier(3)
    assert model.num_classes == 10  # the user's model is a separate object
    with torch.no_grad():
        features = dcs.forward_features(torch.randn(1, 3, 32, 32))
        assert features.shape[:2] == (1, dcs.num_features)
        assert dcs.forward_head(features).shape == (1, 3)


@pytest.mark.parametrize(
    ("source", "name", "kwargs"),
    [
        ("torchvision", "efficientnet_b0", {}),  # stochastic depth: F-style, reads self.training
        ("timm", "convnext_atto", {"drop_path_rate": 0.5}),  # timm DropPath
    ],
)
def test_stochastic_depth_and_dropout_follow_train_and_eval(source, name, kwargs):
    """Built in train mode (as models are) and transformed with every tap, so DCS adds no randomness:
    in eval mode two forwards agree exactly, in train mode stochastic depth makes them differ."""
    model = _build(source, name, **kwargs).train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # n = k*k: no zero-ring warning either
        dcs = dcspass.transform(model, "index:1", n=25, k=5, check_bounds=False, init="embed")  # the stem
    assert type(dcs) is type(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        dcs.eval()
        torch.testing.assert_close(dcs(x), dcs(x), rtol=0, atol=0)
        dcs.train()
        first = dcs(x)
        assert any(not torch.equal(first, dcs(x)) for _ in range(3)), (
            "stochastic depth stayed off in train mode"
        )


def test_vgg_has_no_strided_conv_and_index_works():
    model = _build("torchvision", "vgg11")
    with pytest.raises(PolicyError, match=r"matches no conv(.|\n)*features\.0"):
        dcspass.transform(model, "downsample")
    dcs = dcspass.transform(model, "index:2", check_bounds=False)
    assert type(dcs) is torchvision.models.VGG
    assert [n for n, _ in dcspass.dcs_layers(dcs)] == ["features.3"]
    assert dcs(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_timm_std_conv_models_are_refused_whole():
    model = _build("timm", "resnetv2_50x1_bit")
    p_error = "matches only non-convertible convs"
    with pytest.raises(PolicyError, match=p_error):
        dcspass.transform(model, "downsample")


@pytest.mark.parametrize(
    ("source", "name", "policy", "k", "kwargs"),
    [
        ("torchvision", "resnet18", "downsample", 7, {}),
        ("torchvision", "convnext_tiny", "downsample", 5, {}),  # 4x4 stride-4 stem, 2x2 stride-2
        ("timm", "tf_efficientnet_b0", "downsample", 5, {}),  # Conv2dSame, TF "SAME" padding
        (
            "torchvision",
            "resnet50",
            "name:layer4.*.conv2",
            5,  # dilation 2, stride 1
            {"replace_stride_with_dilation": [False, False, True]},
        ),
    ],
)
def test_embed_with_all_taps_reproduces_real_models(source, name, policy, k, kwargs):
    model = _build(source, name, **kwargs)
    dcs = dcspass.transform(model, policy, n=k * k, k=k, check_bounds=False, init="embed")
    assert type(dcs) is type(model)
    layers = dict(dcspass.dcs_layers(dcs))
    assert layers
    if name == "convnext_tiny":
        assert {layer.kernel_size for layer in layers.values()} == {5}
    if name == "resnet50":
        assert {layer.dilation for layer in layers.values()} == {(1, 1), (2, 2)}
    x = torch.randn(1, 3, 77, 65)
    with torch.no_grad():
        torch.testing.assert_close(dcs(x), model(x), rtol=1e-4, atol=1e-4)


def test_torchattacks_pgd_runs_unmodified_against_a_transformed_model():
    torch.manual_seed(0)
    model = dcspass.transform(torchvision.models.resnet18(weights=None, num_classes=10).eval(), "index:6")
    x, y = torch.rand(2, 3, 32, 32), torch.randint(0, 10, (2,))
    attack = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=2, random_start=True)
    x_adv = attack(x, y)
    assert x_adv.shape == x.shape and torch.isfinite(x_adv).all()
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    assert (x_adv - x).abs().max() > 0
