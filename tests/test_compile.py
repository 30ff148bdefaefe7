"""torch.compile sees one op per DCS layer, keeps drawing fresh taps, and honours tap control."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from dcspass import DCSConv2d, excluding_taps, frozen_taps

BACKENDS = ["aot_eager"] + (["inductor"] if shutil.which("g++") or shutil.which("gcc") else [])


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dcs = DCSConv2d(8, 8, 5, n=2, stride=2, padding=2)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x):
        return self.head(self.dcs(self.stem(x)))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_model_resamples_and_matches_eager_when_frozen(backend):
    torch.manual_seed(0)
    model = Net()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x = torch.randn(2, 3, 12, 12)
    outs = [compiled(x) for _ in range(6)]
    assert any(not torch.allclose(outs[0], o) for o in outs[1:]), "taps were baked into the graph"
    with frozen_taps(model):
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    with excluding_taps(model, {"dcs": torch.arange(23)}), frozen_taps(model) as taps:
        assert taps["dcs"].tolist() == [23, 24]
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_backward_matches_eager(backend):
    torch.manual_seed(0)
    model = Net()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x = torch.randn(2, 3, 12, 12, requires_grad=True)
    with frozen_taps(model):
        compiled(x).square().sum().backward()
        got = (x.grad.clone(), model.dcs.weight.grad.clone())
        x.grad = None
        model.zero_grad()
        model(x).square().sum().backward()
    torch.testing.assert_close(got[0], x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], model.dcs.weight.grad, rtol=1e-4, atol=1e-5)


def test_compiled_graph_holds_one_op_per_dcs_layer():
    captured = []

    def backend(gm, example_inputs):
        captured.append(gm)
        return gm.forward

    torch.compile(Net(), backend=backend, fullgraph=True)(torch.randn(1, 3, 8, 8))
    targets = [str(node.target) for node in captured[0].graph.nodes if node.op == "call_function"]
    assert sum("dcspass.dcs_conv2d" in t for t in targets) == 1
    assert any("rand" in t for t in targets)  # the draw is in the graph, not a constant


def test_export_keeps_the_op():
    ep = torch.export.export(Net().eval(), (torch.randn(1, 3, 8, 8),))
    assert "dcspass.dcs_conv2d" in str(ep.graph)
