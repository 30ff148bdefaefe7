"""Policies on torchvision's ResNet-18: spellings, globs, callables, composition, and every error."""

from __future__ import annotations

import pytest
import torchvision
from torch import nn

import dcspass
from dcspass import PolicyError
from dcspass.policies import Downsample, Index, Name, Not, Where, as_policy

DOWNSAMPLE = ["conv1", "layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"]


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return torchvision.models.resnet18(weights=None)


def selected(model: nn.Module, policy) -> list[str]:
    return dcspass.plan(model, policy).selected


def _dcs_names(model: nn.Module) -> list[str]:
    return [name for name, _ in dcspass.dcs_layers(model)]


def test_string_spellings(resnet18):
    assert selected(resnet18, "downsample") == DOWNSAMPLE
    assert selected(resnet18, "index:6") == ["layer2.0.conv1"]
    assert selected(resnet18, "index:2,6") == ["layer1.0.conv1", "layer2.0.conv1"]
    assert selected(resnet18, " index:8 ") == ["layer2.0.downsample.0"]  # the 1x1 projection runs 8th
    assert selected(resnet18, "name:layer*.0.conv1") == [
        "layer1.0.conv1",
        "layer2.0.conv1",
        "layer3.0.conv1",
        "layer4.0.conv1",
    ]
    assert selected(resnet18, "name:layer4.?.conv?,conv1") == [
        "conv1",
        "layer4.0.conv1",
        "layer4.0.conv2",
        "layer4.1.conv1",
        "layer4.1.conv2",
    ]


def test_callable_gets_the_name_and_the_conv(resnet18):
    seen = []

    def wide_strided(name: str, conv: nn.Conv2d) -> bool:
        seen.append((name, type(conv)))
        return conv.stride == (2, 2) and conv.out_channels >= 256

    assert selected(resnet18, wide_strided) == [
        "layer3.0.conv1",
        "layer3.0.downsample.0",
        "layer4.0.conv1",
        "layer4.0.downsample.0",
    ]
    assert len(seen) == 20 and all(t is nn.Conv2d for _, t in seen)


def test_composition(resnet18):
    assert selected(resnet18, Downsample() | Index(2)) == ["conv1", "layer1.0.conv1", *DOWNSAMPLE[1:]]
    assert selected(resnet18, Downsample() & Name("layer*")) == DOWNSAMPLE[1:]
    assert selected(resnet18, Name("layer4*") & ~Downsample() & ~Name("*downsample*")) == [
        "layer4.0.conv2",
        "layer4.1.conv1",
        "layer4.1.conv2",
    ]
    # Strings and callables compose with Policy objects on either side.
    assert selected(resnet18, "index:6" | Index(11)) == ["layer2.0.conv1", "layer3.0.conv1"]
    first_stage = lambda name, conv: conv.in_channels == 64
    assert selected(resnet18, Downsample() & first_stage) == ["layer2.0.conv1"]
    assert isinstance(~Downsample(), Not) and isinstance(as_policy(len), Where)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("strided", r"unknown policy 'strided'; expected \"downsample\", \"index:6\""),
        ("index:six", r"index takes 1-based ints separated by commas"),
        ("index:0", r"indices are 1-based \(the first conv is index:1\)"),
        ("index:21", r"the model has 20 convs, so index \[21\] does not exist"),
        ("name:decoder.*", r"matches no conv"),
        ("name:", r"unknown policy 'name:'"),
        (Downsample() & Name("layer1*"), r"matches no conv"),
        (42, r"unknown policy 42 of type int"),
    ],
)
def test_errors_list_the_convs(resnet18, policy, message):
    with pytest.raises(PolicyError, match=message) as info:
        dcspass.transform(resnet18, policy)
    assert isinstance(info.value, ValueError)
    if (isinstance(policy, str) and policy.startswith(("index:2", "name:d"))) or policy == "index:21":
        text = str(info.value)
        assert "Convs in execution order" in text
        assert "    6  layer2.0.conv1         3x3     2" in text


def test_error_for_no_match_shows_the_table(resnet18):
    with pytest.raises(PolicyError) as info:
        dcspass.plan(resnet18, "name:head*")
    lines = str(info.value).splitlines()
    assert lines[1].split() == ["Convs", "in", "execution", "order:"]
    assert lines[2].split() == ["index", "name", "kernel", "stride"]
    assert lines[3].split() == ["1", "conv1", "7x7", "2"]
    assert len(lines) == 3 + 20


def test_policy_object_validation():
    with pytest.raises(PolicyError, match="1-based positive int"):
        Index(0)
    with pytest.raises(PolicyError, match="non-empty glob"):
        Name()


@pytest.mark.parametrize(
    ("policy", "fix"),
    [
        ("index:6", "choose other convs"),
        ("index:6,7", "Index(6, 7) & ~Name('layer2.0.conv1') selects the rest"),
        ("downsample", "choose other convs"),  # on a transformed ResNet-18 it matches only DCS layers
    ],
)
def test_a_policy_that_selects_an_already_dcs_layer_says_so(resnet18, policy, fix):
    dcs = dcspass.transform(resnet18, "downsample")
    with pytest.raises(PolicyError) as info:
        dcspass.transform(dcs, policy)
    first, *table = str(info.value).splitlines()
    assert "already DCS: " in first and "layer2.0.conv1 (index 6)" in first and first.endswith(fix)
    assert "a conv is transformed once" in first
    assert table[7].split()[:4] == ["6", "layer2.0.conv1", "5x5", "2"]
    assert table[7].endswith("  already a DCS layer (n=2 of 5x5)")
    if "&" in fix:  # the composed policy the message proposes selects the rest
        proposed = eval(fix.removesuffix(" selects the rest"), vars(dcspass.policies))
        rest = dcspass.transform(dcs, proposed, check_bounds=False)
        assert _dcs_names(rest) == [
            "conv1",
            "layer2.0.conv1",
            "layer2.0.conv2",
            "layer3.0.conv1",
            "layer4.0.conv1",
        ]


class Anisotropic(nn.Module):
    """A stride-(2, 1) conv (it halves the height only) beside a stride-2 one."""

    def __init__(self) -> None:
        super().__init__()
        self.tall = nn.Conv2d(3, 8, 3, stride=(2, 1), padding=1)
        self.square = nn.Conv2d(8, 8, 3, stride=2, padding=1)

    def forward(self, x):
        return self.square(self.tall(x))


def test_downsample_and_the_bound_read_one_stride_for_anisotropic_convs():
    model = Anisotropic()
    p = dcspass.plan(model, "downsample")
    assert p.selected == ["square"] and p.admissible  # (2, 1) is S=1 for Eq. 12, so it is not selected
    tall = p.rows[0]
    assert tall.stride == (2, 1) and tall.interval == dcspass.bounds.interval(1, 5) and not tall.admissible
    for site_stride in [(2, 1), (1, 2), (2, 2), (3, 2), (1, 1)]:
        site = dcspass.policies.ConvSite(1, "c", (3, 3), site_stride, 1, (1, 1), 1, 3, 8)
        assert Downsample().selects(site) == (dcspass.bounds.effective_stride(site_stride) > 1)
    assert _dcs_names(dcspass.transform(model, "downsample")) == ["square"]
