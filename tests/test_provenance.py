"""report.json and results.json record where their numbers come from: checkpoint path and hash, data
split, command line, seed, versions and device."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata

import pytest
import torch
import torchattacks

from dcspass.data import FASHION_MNIST_DIR
from dcspass.training import build_network
from dcspass.training.checkpoint import save_checkpoint

from ._tiny import tiny_config

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="needs dataset-fashion-mnist"),
]


def test_evaluate_report_records_its_provenance(tmp_path):
    from dcspass.cli import main

    cfg = tiny_config(method="gsat")
    save_checkpoint(tmp_path / "m.pt", {"config": cfg.to_dict(), "model": build_network(cfg).state_dict()})
    argv = ["evaluate", "--checkpoint", str(tmp_path / "m.pt"), "--device", "cpu", "--budget", "smoke",
            "--protocol", "paper", "--repeats", "1", "--no-analyses", "--seed", "7", "--quiet",
            "--out", str(tmp_path / "e")]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((tmp_path / "e" / "report.json").read_text())["config"]["provenance"]
    checkpoint = record["checkpoints"]["model"]
    assert checkpoint["path"] == str((tmp_path / "m.pt").resolve())
    assert checkpoint["sha256"] == hashlib.sha256((tmp_path / "m.pt").read_bytes()).hexdigest()
    assert record["dataset"] == {"name": "fashion_mnist", "split": "test", "data_dir": str(FASHION_MNIST_DIR)}
    assert " evaluate --checkpoint " in record["command"]
    assert "--seed 7" in record["command"] and record["seed"] == 7 and record["device"] == "cpu"
    assert record["versions"]["torch"] == torch.__version__
    assert record["versions"]["torchattacks"] == torchattacks.__version__
    assert record["versions"]["dcspass"] == metadata.version("dcspass")
