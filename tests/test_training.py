"""The training methods take real steps and learn; GSAT trains on taps the attack did not use."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

import dcspass
from dcspass import ConfigError
from dcspass.data import FASHION_MNIST_DIR, fashion_mnist_tensors
from dcspass.training import GSAT, TrainConfig, build_network, load_checkpoint, make_method, train

from ._tiny import tiny_config

pytestmark = [
    pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="needs dataset-fashion-mnist"),
    pytest.mark.usefixtures("one_thread"),
]


@pytest.mark.parametrize("method", ["clean", "pgd_at", "gsat"])
def test_method_takes_real_steps_and_loss_falls(method):
    torch.manual_seed(0)
    cfg = tiny_config(method)
    net = build_network(cfg)
    strategy = make_method(method, cfg.eps, cfg.alpha, cfg.attack_steps)
    strategy.bind(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x, y = fashion_mnist_tensors(train=True, limit=32)
    losses = []
    net.train()
    for _ in range(12):
        loss, logits = strategy.loss(net, x, y)
        assert logits.shape == (32, 10)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


def test_gsat_training_taps_never_meet_the_attack_taps():
    torch.manual_seed(1)
    cfg = tiny_config("gsat", n=3, check_bounds=False)  # n=3 makes a chance overlap likelier
    net = build_network(cfg)
    strategy = GSAT(cfg.eps, cfg.alpha, steps=2)
    strategy.bind(net)
    recorded = dcspass.instrument(net)  # shares the layers: its captured_taps are the training taps
    x, y = fashion_mnist_tensors(train=True, limit=16)
    seen_attack = set()
    for _ in range(12):  # without the exclusion, 12 disjoint draws of 3 of 25 taps have p < 0.01
        strategy.loss(recorded, x, y)
        attack, training = strategy.last_attack_taps, recorded.captured_taps
        assert set(attack) == set(training) == {"layer2.0.conv1"}
        a, t = set(attack["layer2.0.conv1"].tolist()), set(training["layer2.0.conv1"].tolist())
        assert len(a) == len(t) == 3
        assert not a & t, (a, t)
        seen_attack.add(tuple(sorted(a)))
    assert len(seen_attack) > 1  # a fresh draw per batch, not one fixed set


def test_frozen_draw_pgd_at_attacks_like_gsat_but_trains_on_any_taps():
    """GSAT but for the exclusion: the attack's draw is frozen and recorded as GSAT's, and the training
    draw is over all taps, so it meets the attack's taps about as often as chance says."""
    torch.manual_seed(1)
    cfg = tiny_config("frozen_pgd_at", n=3, check_bounds=False)
    net = build_network(cfg)
    strategy = make_method("frozen_pgd_at", cfg.eps, cfg.alpha, steps=2)
    assert isinstance(strategy, GSAT) and strategy.name == "frozen_pgd_at"
    strategy.bind(net)
    recorded = dcspass.instrument(net)
    x, y = fashion_mnist_tensors(train=True, limit=16)
    overlaps = 0
    for _ in range(12):  # P(a draw of 3 of 25 meets 3 given taps) = 0.34: 12 disjoint draws, p < 0.01
        strategy.loss(recorded, x, y)
        a = set(strategy.last_attack_taps["layer2.0.conv1"].tolist())
        t = set(recorded.captured_taps["layer2.0.conv1"].tolist())
        overlaps += bool(a & t)
    assert overlaps > 0


def test_gsat_attack_keeps_one_draw_for_all_pgd_iterations():
    torch.manual_seed(2)
    net = build_network(tiny_config("gsat"))
    strategy = GSAT(steps=3)
    strategy.bind(net)
    layer = dict(dcspass.dcs_layers(net))["layer2.0.conv1"]
    used = []
    original = layer.forward_with_taps

    def spy(x):
        y, taps = original(x)
        used.append(tuple(taps.tolist()))
        return y, taps

    layer.forward_with_taps = spy
    x, y = fashion_mnist_tensors(train=True, limit=8)
    strategy.loss(net, x, y)
    # Three PGD forwards with the frozen draw, then one training forward with a disjoint draw.
    assert len(used) == 4
    assert len(set(used[:3])) == 1
    assert not set(used[0]) & set(used[3])


def test_train_loop_runs_an_epoch_and_logs(capsys, tmp_path):
    x, y = fashion_mnist_tensors(train=True, limit=64)
    xe, ye = fashion_mnist_tensors(train=False, limit=16)
    result = train(
        tiny_config("gsat", samples_per_epoch=64),
        TensorDataset(x, y),
        TensorDataset(xe, ye),
        tmp_path / "ck.pt",
    )
    assert result.completed and (tmp_path / "ck.pt").is_file()
    (record,) = result.history
    assert record["epoch"] == 1 and 0 <= record["pgd_acc"] <= 1 and record["seconds"] > 0
    assert "[gsat] epoch 1/1" in capsys.readouterr().out


def test_train_never_replaces_a_checkpoint_silently(tmp_path):
    path = tmp_path / "ck.pt"
    path.write_bytes(b"a checkpoint the user keeps")
    x, y = fashion_mnist_tensors(train=True, limit=16)
    data = TensorDataset(x, y)
    config = tiny_config("clean", samples_per_epoch=16, eval_examples=4, batch_size=16)
    with pytest.raises(ConfigError) as info:
        train(config, data, data, path, progress=False)
    assert str(info.value) == (
        f"train: checkpoint {path} already exists; pass resume=True to continue it, overwrite=True to "
        "train from scratch over it, or another checkpoint_path"
    )
    with pytest.raises(ConfigError, match="resume=True and overwrite=True contradict each other"):
        train(config, data, data, path, resume=True, overwrite=True, progress=False)
    assert path.read_bytes() == b"a checkpoint the user keeps"
    result = train(config, data, data, path, overwrite=True, progress=False)
    assert result.completed and load_checkpoint(path)["epoch"] == 1


def test_bad_configs_are_config_errors():
    with pytest.raises(dcspass.ConfigError, match="8/255"):
        TrainConfig(eps=8)
    with pytest.raises(dcspass.ConfigError, match="policy"):
        TrainConfig(method="gsat", policy=None)
    with pytest.raises(dcspass.ConfigError, match="method"):
        TrainConfig(method="trades")
    with pytest.raises(dcspass.ConfigError, match="gsat"):
        make_method("trades")


def test_dcs_layer_under_autocast_computes_in_bf16_like_conv2d():
    torch.manual_seed(0)
    layer = dcspass.DCSConv2d(4, 6, 5, n=2, stride=2, padding=2)
    x = torch.randn(2, 4, 9, 9).to(memory_format=torch.channels_last)
    taps = torch.tensor([3, 17])
    mask = torch.zeros(25).index_fill_(0, taps, 1.0).view(5, 5)
    with torch.autocast("cpu", torch.bfloat16), dcspass.using_taps(layer, taps):
        out = layer(x)
        expected = torch.nn.functional.conv2d(x, layer.weight * mask, layer.bias, 2, 2)
    assert out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)
    out.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32  # the weights stay fp32; autocast casts a copy


def test_bf16_channels_last_training_runs_with_fp32_weights(tmp_path):
    x, y = fashion_mnist_tensors(train=True, limit=64)
    xe, ye = fashion_mnist_tensors(train=False, limit=16)
    config = tiny_config("gsat", samples_per_epoch=64, precision="bf16", channels_last=True)
    result = train(config, TensorDataset(x, y), TensorDataset(xe, ye), tmp_path / "ck.pt", progress=False)
    assert result.completed and 0 <= result.history[0]["pgd_acc"] <= 1
    assert all(p.dtype == torch.float32 for p in result.net.parameters())
    assert result.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(dcspass.ConfigError, match="precision"):
        TrainConfig(precision="fp16")
