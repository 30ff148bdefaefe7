"""plan: rows, table, to_dict, the dataflow graph and its drawing (the CLI: test_cli.py)."""

from __future__ import annotations

import json

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
