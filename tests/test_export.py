"""torch.export of a DCS model: the program resamples; frozen_taps / using_taps refuse it with a message
that says what to do; exporting inside them warns that the draw is baked in."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import dcspass
from dcspass import TapError


def _model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 3),
    )
    return dcspass.transform(net, policy="downsample", n=2).eval()


X = torch.rand(2, 1, 8, 8)


def _outputs(program, calls: int = 6) -> list[torch.Tensor]:
    with torch.no_grad():
        return [program(X) for _ in range(calls)]


def test_exported_program_resamples_and_refuses_tap_control():
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exporting outside the contexts is silent
        exported = torch.export.export(model, (X,))
    outs = _outputs(exported.module())
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # a fresh draw per call
    taps = {"2": torch.tensor([0, 24])}
    for program in (exported, exported.module()):
        with pytest.raises(TapError, match=r"torch\.export program; its 1 DCS layer\(s\).*eager model"):
            dcspass.frozen_taps(program).__enter__()
        with pytest.raises(TapError, match=r"inside using_taps\(model, taps\)"):
            dcspass.using_taps(program, taps).__enter__()


@pytest.mark.parametrize("context", ["frozen", "using"])
def test_export_inside_a_tap_context_warns_that_it_bakes_the_draw(context):
    model = _model()
    taps = torch.tensor([3, 7])
    manager = dcspass.frozen_taps(model) if context == "frozen" else dcspass.using_taps(model, taps)
    with manager, pytest.warns(UserWarning, match="bakes the taps .* never resample"):
        exported = torch.export.export(model, (X,))
    outs = _outputs(exported.module())
    assert all(torch.equal(outs[0], o) for o in outs[1:])  # what the warning says: one draw, forever
    if context == "using":
        with torch.no_grad(), dcspass.using_taps(model, taps):
            assert torch.allclose(model(X), outs[0], atol=1e-6)
