"""DDP: two CPU processes (gloo) train GSAT on tiny data, stay in sync, and only rank 0 writes."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import TensorDataset

from dcspass.data import FASHION_MNIST_DIR, fashion_mnist_tensors

pytestmark = [
    pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="needs dataset-fashion-mnist"),
    pytest.mark.slow,
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    from dcspass.training import train
    from tests._tiny import tiny_config

    config = tiny_config("gsat", samples_per_epoch=64)
    x, y = fashion_mnist_tensors(train=True, limit=128)
    xe, ye = fashion_mnist_tensors(train=False, limit=16)
    result = train(
        config,
        TensorDataset(x, y),
        TensorDataset(xe, ye),
        os.path.join(out_dir, f"ck{rank}.pt"),
        device="cpu",
        progress=False,
    )
    flat = torch.cat([p.detach().flatten() for p in result.net.parameters()])
    torch.save(
        {"params": flat, "history": result.history, "world": dist.get_world_size()},
        os.path.join(out_dir, f"rank{rank}.result"),
    )
    dist.destroy_process_group()


def test_two_gloo_processes_train_in_sync(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.result", weights_only=True) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    # DDP averaged the gradients, so both replicas hold the same weights after their steps.
    assert torch.equal(r0["params"], r1["params"])
    # Metrics are summed over both processes: identical logs, counting the whole held-out slice.
    assert r0["history"][0]["clean_acc"] == r1["history"][0]["clean_acc"]
    assert (tmp_path / "ck0.pt").is_file() and not (tmp_path / "ck1.pt").exists()
