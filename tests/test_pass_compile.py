"""torch.compile(transform(model), fullgraph=True): no graph breaks, fresh taps per call, tap control.

Both kinds of result compile: the model's own class with conv modules swapped (the usual case), and
the ``GraphModule`` a rewritten ``F.conv2d`` call site forces.
"""

from __future__ import annotations

import pytest
import timm.layers as timm_layers
import torch
import torch.nn.functional as F
from torch import nn

import dcspass


class Tiny(nn.Module):
    """A residual block, a TF-"SAME" strided conv and a last strided conv, as a module or (``functional``)
    an F.conv2d call site: every rewrite the pass does."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.skip = nn.Conv2d(8, 8, 1, stride=2)
        self.same = timm_layers.Conv2dSame(8, 8, 3, stride=2)
        if functional:
            self.w = nn.Parameter(torch.randn(8, 8, 3, 3) * 0.1)
        else:
            self.last = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.down(x) + self.skip(x))
        x = self.same(x)
        x = F.conv2d(x, self.w, None, 2, 1) if self.functional else self.last(x)
        return self.head(x.mean((2, 3)))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _dcs_model(functional: bool) -> nn.Module:
    torch.manual_seed(0)
    if functional:
        with pytest.warns(UserWarning, match="the result is a torch.fx GraphModule"):
            model = dcspass.transform(Tiny(functional), "downsample", n=2)
    else:
        model = dcspass.transform(Tiny(functional), "downsample", n=2)
        assert type(model) is Tiny
    last = "conv2d" if functional else "last"
    assert sorted(n for n, _ in dcspass.dcs_layers(model)) == sorted([last, "down", "same"])
    return model


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "functional"), [("aot_eager", False), ("aot_eager", True), ("inductor", False)]
)
def test_compiled_transformed_model(backend, functional):
    model = _dcs_model(functional)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x = torch.randn(2, 3, 17, 15)
    outs = [compiled(x) for _ in range(5)]
    assert outs[0].shape == (2, 4)
    assert any(not torch.allclose(outs[0], o) for o in outs[1:]), "taps were baked into the compiled graph"
    with dcspass.frozen_taps(model):
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    if backend == "inductor":
        return  # each tap-control mode and the backward is one more slow compile; aot_eager covers them
    excluded = {name: torch.arange(layer.num_positions - 2) for name, layer in dcspass.dcs_layers(model)}
    with dcspass.excluding_taps(model, excluded), dcspass.frozen_taps(model) as taps:
        assert all(t.tolist() == [23, 24] for t in taps.values())
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    # Backward through the compiled graph reaches the DCS weights.
    compiled(x).square().sum().backward()
    last = model.conv2d if functional else model.last
    assert model.down.weight.grad is not None and last.weight.grad is not None


@pytest.mark.parametrize("functional", [False, True])
def test_no_graph_breaks(functional):
    model = _dcs_model(functional)
    explanation = torch._dynamo.explain(model)(torch.randn(1, 3, 16, 16))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.slow
def test_compiled_instrumented_model_records_fresh_taps():
    model = _dcs_model(functional=False)
    probe = dcspass.instrument(model)
    compiled = torch.compile(probe, backend="aot_eager", fullgraph=True)
    x = torch.randn(1, 3, 16, 16)
    with dcspass.frozen_taps(probe) as frozen:
        compiled(x)
        captured = {k: v.tolist() for k, v in probe.captured_taps.items()}
        assert captured == {k: v.tolist() for k, v in frozen.items()}
    seen = set()
    for _ in range(4):
        y = compiled(x)
        taps = {k: v.clone() for k, v in probe.captured_taps.items()}
        seen.add(tuple(tuple(v.tolist()) for v in taps.values()))
        with dcspass.using_taps(model, taps):
            torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-5)
    assert len(seen) > 1, "the compiled instrumented model recorded the same taps every call"


class TrainBranch(nn.Module):
    """A strided conv whose output the forward doubles in train mode (a branch on ``self.training``)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(x)
        return (y * 2 if self.training else y).mean((2, 3))


@pytest.mark.slow
def test_compiled_mode_switching_instrumented_model_follows_train_and_eval():
    dcs = dcspass.transform(TrainBranch(), "downsample")
    probe = dcspass.instrument(dcs)  # one graph per mode
    compiled = torch.compile(probe, backend="aot_eager", fullgraph=True)
    x = torch.randn(1, 3, 8, 8)
    for training in (True, False, True):
        probe.train(training)
        dcs.train(training)
        y = compiled(x)
        with dcspass.using_taps(dcs, probe.captured_taps):
            torch.testing.assert_close(dcs(x), y, rtol=1e-6, atol=1e-6)
