"""Data-parallel helpers: one process per device under ``torchrun``; a no-op in a single process.

``torchrun --nproc_per_node=N`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; ``init_distributed``
reads them and joins the process group (gloo on CPU, NCCL on CUDA). Rank 0 alone writes files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from ..preflight import resolve_device

__all__ = ["DistContext", "EpochSampler", "all_reduce_sum", "barrier", "init_distributed"]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size``, on ``device``; ``is_main`` writes files."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | torch.device | None = None) -> DistContext:
    """Join the process group that ``torchrun`` (or any launcher setting the env vars) describes.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``... or None for CUDA when available. Under several
            processes on CUDA each process takes ``cuda:LOCAL_RANK``.
    """
    device = resolve_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(0, 1, device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return DistContext(rank, world_size, device)


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Sum a few scalars over all processes (identity in a single process)."""
    if not ctx.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(ctx: DistContext) -> None:
    """Wait for every process (no-op in a single process)."""
    if ctx.distributed:
        dist.barrier()


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` that can also take a fresh random subset of the data each epoch.

    The order is a function of ``(seed, epoch)`` only, so a resumed run sees the same batches as an
    uninterrupted one. ``samples_per_epoch`` (None = all) is the total over all processes; each
    process gets an equal share.
    """

    def __init__(
        self,
        dataset_len: int,
        ctx: DistContext,
        seed: int = 0,
        samples_per_epoch: int | None = None,
        shuffle: bool = True,
    ) -> None:
        super().__init__(
            range(dataset_len), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed
        )
        total = dataset_len if samples_per_epoch is None else min(samples_per_epoch, dataset_len)
        self.num_samples = total // ctx.world_size
        self.total_size = self.num_samples * ctx.world_size

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(self.dataset), generator=g)
        else:
            order = torch.arange(len(self.dataset))
        return iter(order[: self.total_size][self.rank :: self.num_replicas].tolist())
