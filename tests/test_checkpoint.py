"""Checkpoints: resume equals an uninterrupted run; atomic writes; clear errors for bad files."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

import dcspass
from dcspass import CheckpointError
from dcspass.data import FASHION_MNIST_DIR, fashion_mnist_tensors
from dcspass.training import TrainConfig, train
from dcspass.training import checkpoint as ckpt
from dcspass.training.checkpoint import load_model, save_checkpoint

from ._tiny import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")
needs_fmnist = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="needs dataset-fashion-mnist")


def _config(**kw) -> TrainConfig:
    """Two short epochs with an lr step between them, so resuming crosses a scheduler milestone."""
    resumable = dict(batch_size=16, eval_examples=8, epochs=2, samples_per_epoch=48, milestones=[1], seed=3)
    return tiny_config(**{**resumable, **kw})


@pytest.fixture(scope="module")
def data():
    x, y = fashion_mnist_tensors(train=True, limit=128)
    xe, ye = fashion_mnist_tensors(train=False, limit=8)
    return TensorDataset(x, y), TensorDataset(xe, ye)


@needs_fmnist
def test_resume_after_an_epoch_equals_an_uninterrupted_run(data, tmp_path):
    train_set, eval_set = data
    full = train(_config(), train_set, eval_set, tmp_path / "full.pt", progress=False)
    first = train(_config(), train_set, eval_set, tmp_path / "cut.pt", stop_after_epoch=1, progress=False)
    assert first.epochs_done == 1 and not first.completed
    # Scramble the global RNG, as a new process would have it.
    torch.manual_seed(12345)
    resumed = train(_config(), train_set, eval_set, tmp_path / "cut.pt", resume=True, progress=False)
    assert resumed.completed
    full_state, resumed_state = full.net.state_dict(), resumed.net.state_dict()
    assert full_state.keys() == resumed_state.keys()
    for key in full_state:
        assert torch.equal(full_state[key], resumed_state[key]), key
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]
    # And the run did move the weights (so equality is not trivial).
    assert not torch.equal(first.net.state_dict()["linear.weight"], full_state["linear.weight"])


@needs_fmnist
def test_load_model_rebuilds_the_dcs_network(data, tmp_path):
    train_set, eval_set = data
    result = train(_config(epochs=1), train_set, eval_set, tmp_path / "m.pt", progress=False)
    model, config = load_model(tmp_path / "m.pt")
    assert config["method"] == "gsat" and config["policy"] == "index:6"
    assert [n for n, _ in dcspass.dcs_layers(model)] == ["layer2.0.conv1"]
    x = eval_set.tensors[0]
    taps = {"layer2.0.conv1": torch.tensor([3, 12])}
    with torch.no_grad(), dcspass.using_taps(model, taps), dcspass.using_taps(result.net, taps):
        assert torch.equal(model(x), result.net.eval()(x))


@needs_fmnist
def test_resume_into_another_network_is_a_checkpoint_error(data, tmp_path):
    train_set, eval_set = data
    train(_config(epochs=1), train_set, eval_set, tmp_path / "m.pt", progress=False)
    with pytest.raises(CheckpointError, match="width"):
        train(_config(width=8), train_set, eval_set, tmp_path / "m.pt", resume=True, progress=False)
    with pytest.raises(CheckpointError, match="num_classes"):
        load_model(tmp_path / "m.pt", expect={"num_classes": 100})


def _tiny_payload(model: torch.nn.Module, config: TrainConfig) -> dict:
    return {"config": config.to_dict(), "model": model.state_dict(), "epoch": 1, "history": []}


def test_wrong_class_count_in_weights_is_a_checkpoint_error(tmp_path):
    cfg = _config(policy=None, method="clean", num_classes=10)
    model = dcspass.training.build_network(_config(policy=None, method="clean", num_classes=7))
    save_checkpoint(tmp_path / "bad.pt", _tiny_payload(model, cfg))  # config says 10, weights have 7
    with pytest.raises(CheckpointError, match="10 classes"):
        load_model(tmp_path / "bad.pt")


def test_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a dcspass checkpoint"):
        load_model(tmp_path / "foreign.pt")


@pytest.mark.parametrize("size", [5_000, 20_000, 50_000])
def test_truncated_checkpoint_is_reported_as_truncated(tmp_path, size):
    # Cut to 5-50 KB, torch's zip reader seeks before the file's start and raises OSError(EINVAL).
    cfg = _config(policy=None, method="clean")
    save_checkpoint(tmp_path / "whole.pt", _tiny_payload(dcspass.training.build_network(cfg), cfg))
    whole = (tmp_path / "whole.pt").read_bytes()
    assert len(whole) > size
    (tmp_path / "cut.pt").write_bytes(whole[:size])
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path / "cut.pt")
    message = str(info.value)
    assert message.startswith(f"checkpoint {tmp_path / 'cut.pt'} cannot be parsed: it is corrupt, truncated")
    assert message.endswith("point to another file, or train again")


def test_missing_checkpoint_names_the_flag_that_gave_it(tmp_path):
    with pytest.raises(
        CheckpointError, match=r"does not exist; train first, or check --transfer-checkpoint$"
    ):
        load_model(tmp_path / "none.pt", flag="--transfer-checkpoint")
    with pytest.raises(CheckpointError, match=r"does not exist; train first, or check the path$"):
        load_model(tmp_path / "none.pt")


def test_write_is_atomic_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"epoch": 1})
    assert ckpt.load_checkpoint(path)["epoch"] == 1

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    save_checkpoint(tmp_path / "r.pt", {"rng": ckpt.capture_rng()})
    expected = torch.rand(5)
    torch.rand(100)
    ckpt.restore_rng(ckpt.load_checkpoint(tmp_path / "r.pt")["rng"])
    assert torch.equal(torch.rand(5), expected)
