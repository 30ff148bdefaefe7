"""Interrupted runs: SIGKILL during training or during a checkpoint save, then resume, ends with the same
weights as a run never stopped (one thread, so bitwise); Ctrl-C ends with one line saying how to resume;
the temporary files a killed save leaves are removed."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from dcspass.data import FASHION_MNIST_DIR, fashion_mnist_tensors
from dcspass.errors import ConfigError
from dcspass.files import stale_temporaries
from dcspass.training import train
from dcspass.training.checkpoint import load_checkpoint, save_checkpoint
from recipes import common, paper_rn18, spec

from ._tiny import tiny_config

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="needs dataset-fashion-mnist"),
]
REPO = Path(__file__).resolve().parents[1]
CONFIG = dict(batch_size=16, eval_examples=8, epochs=3, samples_per_epoch=48, milestones=[2], seed=3)

# A training process that SIGKILLs itself: in the middle of epoch 2 ("training"), or halfway through
# writing the second checkpoint ("save"), after the first checkpoint is safely on disk.
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from torch.utils.data import TensorDataset
    torch.set_num_threads(1)
    from dcspass.data import fashion_mnist_tensors
    from dcspass.training import checkpoint, engine, train
    from tests._tiny import tiny_config

    where, path, config = sys.argv[1], sys.argv[2], eval(sys.argv[3])
    saves = []
    real_save_checkpoint, real_torch_save = engine.save_checkpoint, torch.save

    def counting_save(p, payload):
        real_save_checkpoint(p, payload)
        saves.append(p)

    def dying_torch_save(obj, f):
        if len(saves) == 1:
            f.write(b"the first bytes of a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        real_torch_save(obj, f)

    class DyingData(TensorDataset):
        def __getitem__(self, i):
            if saves and where == "training":
                os.kill(os.getpid(), signal.SIGKILL)
            return super().__getitem__(i)

    engine.save_checkpoint = counting_save
    checkpoint.torch.save = dying_torch_save if where == "save" else real_torch_save
    x, y = fashion_mnist_tensors(True, limit=128)
    xe, ye = fashion_mnist_tensors(False, limit=8)
    train(tiny_config(**config), DyingData(x, y), TensorDataset(xe, ye), path, progress=False)
    """
)


@pytest.fixture(scope="module")
def data():
    x, y = fashion_mnist_tensors(train=True, limit=128)
    xe, ye = fashion_mnist_tensors(train=False, limit=8)
    return TensorDataset(x, y), TensorDataset(xe, ye)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(tiny_config(**CONFIG), *data, tmp_path_factory.mktemp("full") / "m.pt", progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("where", ["training", "save"])
def test_sigkill_then_resume_equals_an_uninterrupted_run(data, uninterrupted, tmp_path, where):
    path = tmp_path / "m.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, where, str(path), repr(CONFIG)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert load_checkpoint(path)["epoch"] == 1  # the checkpoint before the kill is intact
    assert bool(stale_temporaries(path)) == (where == "save")
    resumed = train(tiny_config(**CONFIG), *data, path, resume=True, progress=False)
    assert resumed.completed and not stale_temporaries(path)
    full, again = uninterrupted.net.state_dict(), resumed.net.state_dict()
    for key in full:
        assert torch.equal(full[key], again[key]), key
    assert [h["loss"] for h in uninterrupted.history] == [h["loss"] for h in resumed.history]


def test_next_save_removes_what_a_killed_save_left(tmp_path):
    path = tmp_path / "m.pt"
    stale = tmp_path / ".m.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".other.pt.abc123.tmp"  # another checkpoint's temporary is not ours to remove
    other.write_bytes(b"x")
    save_checkpoint(path, {"epoch": 1})
    assert not stale.exists() and other.exists()


def test_ctrl_c_during_a_recipe_says_where_the_checkpoint_is_and_how_to_resume(tmp_path):
    out = tmp_path / "run"
    argv = ["--dataset", "fashion_mnist", "--epochs", "3", "--samples-per-epoch", "64",
            "--eval-examples", "8", "--batch-size", "32", "--width", "4", "--budget", "smoke",
            "--quick-eval", "--no-fig4a", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "recipes.paper_rn18", *argv],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # A job started in the background inherits SIGINT ignored, and then Python raises no
        # KeyboardInterrupt: give the child the default disposition, as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 600
    while not (out / "pgd_at.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]  # after the stage lines: one line about the interrupt
    assert "interrupted while training" in line and f"last checkpoint {out}/" in line
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[:3] == ["python", "-m", "recipes.paper_rn18"] and command[-1] == "--resume"
    args = spec.build_parser(paper_rn18.SPEC).parse_args(command[3:])
    assert args.resume and args.out == out and args.epochs == 3


def test_ctrl_c_before_a_later_seed_trains_names_the_finished_seeds(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    calls = []

    def one_seed(spec, args, argv, ctx):  # seed 0 finishes; Ctrl-C while seed 1 loads its data
        calls.append(args.seed)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return {}

    monkeypatch.setattr(common, "_run_seed", one_seed)
    argv = ["--seeds", "3", "--width", "4", "--dataset", "fashion_mnist", "--out", str(out)]
    assert common.main(paper_rn18.SPEC, argv) == 130
    line = capsys.readouterr().err.strip()
    assert calls == [0, 1]
    assert "interrupted before seed 1 began training" in line and f"seed_0 complete in {out}" in line
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[3:] == [*argv, "--resume"]


def test_every_rank_refuses_an_out_holding_a_run_and_only_rank_0_deletes(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / spec.RESULTS).write_text("{}\n")
    parser = spec.build_parser(paper_rn18.SPEC)
    for is_main in (True, False):
        with pytest.raises(ConfigError, match="already holds a finished run"):
            spec.check_out(parser.parse_args(["--out", str(out)]), [], is_main)
    spec.check_out(parser.parse_args(["--out", str(out), "--overwrite"]), [], is_main=False)
    assert (out / spec.RESULTS).exists()
    spec.check_out(parser.parse_args(["--out", str(out), "--overwrite"]), [], is_main=True)
    assert not (out / spec.RESULTS).exists()
