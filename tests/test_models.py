"""The paper's networks: shapes for 1- and 3-channel inputs, sizes, and the conv order placements rely on."""

from __future__ import annotations

import pytest
import torch

import dcspass
from dcspass.models import build_model


def _param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("arch", "width", "options", "side"),
    [
        ("resnet18", 8, {}, 28),
        ("wrn34", 1, {}, 32),
        ("resnet50", 8, {}, 64),
        ("vit_convstem", 32, {"depth": 2, "image_size": 28}, 28),
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_forward_shape_for_one_and_three_channels(arch, width, options, side, channels):
    model = build_model(arch, num_classes=7, in_channels=channels, width=width, **options).eval()
    with torch.no_grad():
        out = model(torch.rand(2, channels, side, side))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_paper_widths_have_the_published_sizes():
    # The standard CIFAR ResNet-18 and WRN-34-10 and torchvision's ResNet-50, as reported in their papers.
    assert _param_count(build_model("resnet18", 10)) == 11_173_962
    assert _param_count(build_model("wrn34", 10)) == 46_160_474
    assert _param_count(build_model("resnet50", 1000)) == 25_557_032


def test_width_knob_shrinks_resnet18():
    assert _param_count(build_model("resnet18", 10, width=8)) < _param_count(build_model("resnet18", 10)) / 50


def _dcs_names(model: torch.nn.Module) -> list[str]:
    return [name for name, _ in dcspass.dcs_layers(model)]


def test_resnet18_index6_is_layer2_conv1_and_index2_is_layer1_conv1():
    model = build_model("resnet18", 10, 1, width=8)
    assert _dcs_names(dcspass.transform(model, policy="index:6", n=2, k=5)) == ["layer2.0.conv1"]
    picked = dcspass.transform(model, policy="index:2", n=2, k=5, check_bounds=False)
    assert _dcs_names(picked) == ["layer1.0.conv1"]


def test_resnet18_stem_is_3x3_without_maxpool():
    model = build_model("resnet18", 10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())


def test_vit_dcs_goes_on_the_second_stem_conv():
    model = build_model("vit_convstem", 10, 3, width=64, depth=1)
    dcs = dcspass.transform(model, policy="index:2", n=2, k=5)
    assert _dcs_names(dcs) == ["stem.1.conv"]
    assert dcs(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_unknown_arch_and_bad_width_are_config_errors():
    with pytest.raises(dcspass.ConfigError, match="resnet18"):
        build_model("resnet19", 10)
    with pytest.raises(dcspass.ConfigError, match="width"):
        build_model("resnet18", 10, width=0)
    with pytest.raises(dcspass.ConfigError, match="patch_size"):
        build_model("vit_convstem", 10, patch_size=6)
