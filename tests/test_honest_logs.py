"""The per-epoch and recipe accuracies are expected accuracies over several draws of taps, and say on
how many images and draws they rest."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import dcspass
from dcspass.data import FASHION_MNIST_DIR, fashion_mnist_tensors
from dcspass.training import paper_protocol_accuracy, train

from ._tiny import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


class CoinFlip(nn.Module):
    """Class 0 wins exactly when the one drawn tap (k=5, n=1) is among the first 10 of 25: p = 0.4.

    On a constant image the centre output of the DCS conv is the weight at the drawn tap, so every
    image in a batch gets the same verdict from one draw: one draw per batch scores 0 % or 100 %.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = dcspass.DCSConv2d(1, 2, 5, n=1, padding=2, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0].view(-1)[:10] = 1.0
            self.conv.weight[1, 0].view(-1)[10:] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)[:, :, 2, 2]


def test_expected_accuracy_over_draws_is_near_the_true_probability():
    net = CoinFlip()
    x, y = torch.full((64, 1, 5, 5), 0.5), torch.zeros(64, dtype=torch.long)
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 64, 32)]
    torch.manual_seed(0)
    clean, robust, total = paper_protocol_accuracy(net, batches, eps=0.1, alpha=0.05, steps=1, draws=64)
    assert total == 64
    assert abs(clean / total - 0.4) < 0.08  # 4 chunks x 64 draws: two standard errors are about 0.06
    assert abs(robust / total - 0.4) < 0.08  # the attack cannot flip which channel a tap feeds
    singles = []
    for seed in range(8):
        torch.manual_seed(seed)
        singles.append(paper_protocol_accuracy(net, batches, eps=0.1, alpha=0.05, steps=1)[0] / total)
    assert set(singles) <= {0.0, 0.25, 0.5, 0.75, 1.0}  # one draw per chunk of 16: all-or-nothing chunks


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="needs dataset-fashion-mnist")
def test_epoch_line_and_history_name_images_and_draws(capsys):
    x, y = fashion_mnist_tensors(True, limit=32)
    xe, ye = fashion_mnist_tensors(False, limit=8)
    cfg = tiny_config(epochs=1, samples_per_epoch=32, eval_examples=8, batch_size=16, eval_draws=3)
    result = train(cfg, TensorDataset(x, y), TensorDataset(xe, ye), name="tiny")
    record = result.history[0]
    assert (record["eval_images"], record["eval_draws"]) == (8, 3)
    assert "8 images, expected over 3 draws of taps" in capsys.readouterr().out
    base = train(tiny_config("pgd_at", epochs=1, samples_per_epoch=32, eval_examples=8, batch_size=16),
                 TensorDataset(x, y), TensorDataset(xe, ye), progress=False)  # fmt: skip
    assert base.history[0]["eval_draws"] == 1  # no taps to draw: one forward is exact
