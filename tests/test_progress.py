"""Progress: tqdm bars with ETA on a terminal (training, the per-epoch evaluation, every evaluation
protocol and attack), one line per stage otherwise, nothing under ``quiet``/``--quiet``."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import dcspass
from dcspass import progress
from dcspass.data import FASHION_MNIST_DIR, fashion_mnist_tensors
from dcspass.evaluation import Budget
from dcspass.training import build_network, train
from dcspass.training.checkpoint import save_checkpoint

from ._tiny import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")
needs_fmnist = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="needs dataset-fashion-mnist")
REPO = Path(__file__).resolve().parents[1]


class Terminal(io.StringIO):
    """A stderr that says it is an interactive terminal."""

    def isatty(self) -> bool:
        return True


class Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_bar_shows_an_eta_on_a_terminal_only(monkeypatch):
    for stream, shown in ((Terminal(), True), (Pipe(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        assert list(progress.bar(range(3), "work", total=3)) == [0, 1, 2]
        assert ("work" in stream.getvalue() and "<" in stream.getvalue()) == shown  # tqdm's [elapsed<eta]
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    with progress.quiet():
        list(progress.bar(range(3), "work"))
        progress.stage("a stage")
    assert stream.getvalue() == ""
    progress.stage("a stage")
    assert stream.getvalue() == "a stage\n"


@needs_fmnist
@pytest.mark.parametrize("terminal", [True, False])
def test_training_shows_bars_for_batches_and_held_out_evaluation(monkeypatch, capsys, terminal):
    x, y = fashion_mnist_tensors(True, limit=64)
    xe, ye = fashion_mnist_tensors(False, limit=8)
    stream = Terminal() if terminal else Pipe()
    monkeypatch.setattr(sys, "stderr", stream)
    train(tiny_config(epochs=1, samples_per_epoch=32, eval_examples=8, batch_size=16), TensorDataset(x, y),
          TensorDataset(xe, ye), name="tiny")  # fmt: skip
    err = stream.getvalue()
    assert "[tiny] training epochs 1..1 of gsat" in err  # the stage line, on a terminal or not
    assert ("[tiny] epoch 1/1" in err) == terminal
    assert ("[tiny] held-out evaluation, epoch 1" in err) == terminal
    if not terminal:
        assert err.count("\n") == 1 and "\r" not in err
    assert "[tiny] epoch 1/1 loss=" in capsys.readouterr().out


class TinyDCS(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(1, 4, 3, padding=1)
        self.mid = dcspass.DCSConv2d(4, 8, 5, n=2, stride=2, padding=2)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.mid(F.relu(self.c0(x))))
        return self.head(h.mean((2, 3)))


TINY_BUDGET = Budget(
    name="progress-test", examples=8, batch_size=4, repeats=1, pgd_steps=1, cw_steps=1, mifgsm_steps=1,
    deepfool_steps=1, eotpgd_steps=1, eotpgd_samples=1, autoattack="apgd", apgdt_targets=1,
    apgd_steps=1, eot_steps=1, eot_samples=1, apgd_eot=1, exact_steps=1, known_steps=1,
    square_queries=5, square_eot=1, sample_draws=2, all_correct_k=2, transfer_steps=1, reference_steps=1,
    reference_targets=1, reference_square_queries=5, reference_eot=1,
)  # fmt: skip


@needs_fmnist
def test_evaluation_shows_a_bar_per_protocol_and_attack(monkeypatch):
    x, y = fashion_mnist_tensors(False, limit=8)
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    torch.manual_seed(0)
    dcspass.evaluate(TinyDCS(), [(x, y)], budget=TINY_BUDGET, analyses=False)
    err = stream.getvalue()
    assert "evaluate: paper protocol, 1 repeat on 8 images" in err
    assert "evaluate: adaptive protocol on 8 images" in err
    assert "paper protocol, repeat 1/1" in err
    for attack in ("EOT-PGD", "APGD-CE (EOT)", "exact expectation", "Square (EOT)"):
        assert f"adaptive: {attack}" in err, attack


def test_evaluate_cli_quiet(tmp_path):
    cfg = tiny_config(method="pgd_at")
    save_checkpoint(tmp_path / "m.pt", {"config": cfg.to_dict(), "model": build_network(cfg).state_dict()})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    base = [sys.executable, "-m", "dcspass", "evaluate", "--checkpoint", str(tmp_path / "m.pt"),
            "--device", "cpu", "--budget", "smoke", "--protocol", "paper", "--repeats", "1",
            "--no-analyses"]  # fmt: skip
    loud = subprocess.run([*base, "--out", str(tmp_path / "a")], env=env, capture_output=True, text=True)
    hushed = subprocess.run(
        [*base, "--quiet", "--out", str(tmp_path / "b")], env=env, capture_output=True, text=True
    )
    assert loud.returncode == hushed.returncode == 0, hushed.stderr[-2000:]
    assert "evaluate: paper protocol" in loud.stderr
    assert "evaluate:" not in hushed.stderr and "# dcspass evaluation report" in hushed.stdout
