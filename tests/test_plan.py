"""plan: rows, table, to_dict, the dataflow graph and its drawing (the CLI: test_cli.py)."""

from __future__ import annotations

import json
import warnings

import pytest
import timm.layers as timm_layers
import torch
import torchvision
from torch import nn

import dcspass


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return torchvision.models.resnet18(weights=None)


def test_rows_and_selection(resnet18):
    p = dcspass.plan(resnet18, "downsample")
    assert isinstance(p, dcspass.Plan)
    assert [r.index for r in p.rows] == list(range(1, 21))
    assert p.selected == ["conv1", "layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"]
    row = p.rows[5]
    assert (row.name, row.kernel, row.stride, row.selected) == ("layer2.0.conv1", (3, 3), (2, 2), True)
    assert row.k == 5
    assert row.interval == (0.225, 2.0) and row.admissible
    stride_one = p.rows[1]
    assert not stride_one.selected and stride_one.admissible is False
    assert p.rows[0].k == 7 and p.admissible
    assert not dcspass.plan(resnet18, "index:2").admissible
    assert not list(dcspass.dcs_layers(resnet18))  # a dry run: nothing rewritten


def test_table_and_dict(resnet18):
    p = dcspass.plan(resnet18, "index:6", n=2)
    text = str(p)
    lines = text.splitlines()
    assert lines[0].startswith("dcspass plan: policy=index:6, n=2")
    assert lines[1].split()[:4] == ["index", "name", "kind", "kernel"]
    assert lines[7].split() == [
        "6",
        "layer2.0.conv1",
        "Conv2d",
        "3x3",
        "2",
        "DCS",
        "5",
        "[0.225,",
        "2]",
        "yes",
    ]
    assert lines[-1] == "1 of 20 convs selected; every selected layer is admissible."
    d = json.loads(json.dumps(p.to_dict()))
    assert d["policy"] == "index:6" and d["traced"] is True
    assert d["rows"][5]["selected"] is True and d["rows"][5]["interval"] == [0.225, 2.0]
    assert ["conv1", "layer1.0.conv1"] in d["edges"]


def test_dataflow_graph(resnet18):
    g = dcspass.plan(resnet18, "downsample").graph
    assert g.number_of_nodes() == 22  # 20 convs, input, output
    assert g.has_edge("input", "conv1") and g.has_edge("layer4.1.conv2", "output")
    assert g.has_edge("layer1.0.conv1", "layer1.0.conv2")
    assert g.has_edge("conv1", "layer2.0.conv1")  # through maxpool and two identity shortcuts
    assert g.has_edge("layer2.0.downsample.0", "layer2.1.conv1")
    assert not g.has_edge("layer1.0.conv1", "layer2.0.conv1")  # conv2 sits between them
    assert g.nodes["layer2.0.conv1"]["dcs"] and not g.nodes["layer2.0.conv2"]["dcs"]


def test_draw(resnet18, tmp_path):
    path = tmp_path / "plan.png"
    fig = dcspass.plan(resnet18, "downsample").draw(str(path))
    assert path.stat().st_size > 10_000
    assert "4 DCS layers" in fig.axes[0].get_title()
    fig = dcspass.plan(resnet18, "index:6").draw()
    assert fig.axes[0].get_title().startswith("1 DCS layer (red)")


def test_non_convertible_and_untraceable_models():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.std = timm_layers.StdConv2d(3, 8, 3, stride=2)
            self.conv = nn.Conv2d(8, 8, 3, stride=2)

        def forward(self, x):
            x = self.std(x)
            return self.conv(x if x.mean() > 0 else -x)

    p = dcspass.plan(Branchy(), "downsample", example_inputs=torch.zeros(1, 3, 16, 16))
    assert not p.traced and "TraceError" in p.trace_error
    rows = [(r.name, r.convertible, r.selected) for r in p.rows]
    assert rows == [("std", False, False), ("conv", True, True)]
    assert "non-convertible: StdConv2d overrides forward" in str(p)
    assert list(p.graph.edges) == [("input", "std"), ("std", "conv"), ("conv", "output")]


@pytest.mark.parametrize("n", [2, 3, 26])
def test_plan_gives_the_advice_transform_follows(resnet18, n):
    """n=2 is admissible, n=3 is outside Eq. 12 (check_bounds=False lets it through), n=26 exceeds the
    25 taps of a 5x5 kernel (a ConfigError that check_bounds=False does not lift)."""
    p = dcspass.plan(resnet18, "downsample", n=n)
    verdict = str(p).splitlines()[-1]
    if "check_bounds=False" in verdict:
        with pytest.raises(dcspass.BoundError):
            dcspass.transform(resnet18, "downsample", n=n)
        dcs = dcspass.transform(resnet18, "downsample", n=n, check_bounds=False)
        assert {layer.n for _, layer in dcspass.dcs_layers(dcs)} == {n}
    elif "ConfigError" in verdict:
        assert p.refusal and p.refusal in verdict and not p.admissible
        with pytest.raises(dcspass.ConfigError) as refused:
            dcspass.transform(resnet18, "downsample", n=n, check_bounds=False)
        assert str(refused.value) == p.refusal
    else:
        assert p.admissible and not p.refusal
        assert len(list(dcspass.dcs_layers(dcspass.transform(resnet18, "downsample", n=n)))) == 4
    assert ("ConfigError" in verdict) == (n == 26) and ("check_bounds=False" in verdict) == (n == 3)


def test_transformed_model_keeps_its_indices_and_shows_its_dcs_layers(resnet18):
    dcs = dcspass.transform(resnet18, "downsample")
    before, after = dcspass.plan(resnet18, "index:7"), dcspass.plan(dcs, "index:7")
    assert [(r.index, r.name) for r in after.rows] == [(r.index, r.name) for r in before.rows]
    assert after.selected == before.selected == ["layer2.0.conv2"]
    marked = [r for r in after.rows if r.already_dcs]
    assert [r.name for r in marked] == ["conv1", "layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"]
    assert all(r.kind == "DCSConv2d" and not r.selected and not r.convertible for r in marked)
    lines = str(after).splitlines()
    assert "already" in lines[7].split() and "already a DCS layer (n=2 of 5x5)" in lines[7]
    assert lines[7].split()[:2] == ["6", "layer2.0.conv1"]
    assert lines[-1].startswith("1 of 20 convs selected (4 already DCS)")
    assert json.loads(json.dumps(after.to_dict()))["rows"][5]["already_dcs"] is True


def _quantized_conv(*args, **kwargs) -> nn.Module:
    from torch.ao.nn.quantized import Conv2d

    with warnings.catch_warnings():  # torch deprecates quantized tensors; the module still builds
        warnings.simplefilter("ignore")
        return Conv2d(*args, **kwargs)


def test_quantized_convs_are_named_non_convertible():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), _quantized_conv(8, 8, 3, stride=2))
    p = dcspass.plan(model, "index:1")
    row = p.rows[1]
    assert (row.index, row.name, row.kind, row.convertible) == (2, "1", "Conv2d", False)
    assert "non-convertible: Conv2d is a torch.ao quantized conv" in str(p).splitlines()[-2]
    with pytest.raises(
        dcspass.PolicyError, match=r"matches only non-convertible convs: 1 \(Conv2d is a torch.ao q"
    ):
        dcspass.transform(model, "index:2")
