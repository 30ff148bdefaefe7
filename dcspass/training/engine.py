"""The training loop: one loop for every method (clean, PGD-AT, GSAT), with checkpoints and DDP.

Per epoch: draw the epoch's examples (``EpochSampler``: a function of seed and epoch), step SGD on
each batch with the method's loss, step the schedule, measure clean and PGD accuracy on a held-out
slice (paper protocol), log one line, and write a checkpoint atomically (rank 0). ``resume=True``
continues from the checkpoint with the same optimiser, schedule, RNG states and history, so a run
stopped after an epoch and resumed ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import ConfigError, DCSError
from ..files import remove_stale_temporaries
from ..progress import bar, log, stage
from ..text import plural
from .checkpoint import capture_rng, check_compatible, load_checkpoint, restore_rng, save_checkpoint
from .config import TrainConfig, build_network
from .distributed import DistContext, EpochSampler, all_reduce_sum, barrier, init_distributed
from .methods import make_method
from .monitor import paper_protocol_accuracy

__all__ = ["TrainResult", "make_optimizer", "make_scheduler", "train"]


@dataclass
class TrainResult:
    """What ``train`` returns: the bare network (final weights), its config, per-epoch history."""

    net: nn.Module
    config: TrainConfig
    history: list[dict[str, Any]]
    checkpoint: Path | None
    epochs_done: int

    @property
    def completed(self) -> bool:
        return self.epochs_done >= self.config.epochs


def make_optimizer(net: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay (the paper's optimiser for every recipe)."""
    return torch.optim.SGD(
        net.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule: multi-step (x gamma at each milestone) or cosine annealing over all epochs."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(config.milestones), gamma=config.gamma
    )


def _eval_loader(eval_set: Dataset, config: TrainConfig, ctx: DistContext) -> DataLoader:
    count = min(config.eval_examples, len(eval_set))
    # Each process scores its own share of the held-out slice; counts are summed afterwards.
    return DataLoader(Subset(eval_set, range(ctx.rank, count, ctx.world_size)), batch_size=config.batch_size)


def _check_checkpoint_path(path: Path | None, resume: bool, overwrite: bool) -> None:
    """``ConfigError`` for a run that would replace a checkpoint nobody asked it to replace."""
    if resume and overwrite:
        raise ConfigError("train: resume=True and overwrite=True contradict each other; pass one of them")
    if path is not None and path.exists() and not (resume or overwrite):
        raise ConfigError(
            f"train: checkpoint {path} already exists; pass resume=True to continue it, overwrite=True to "
            "train from scratch over it, or another checkpoint_path"
        )


def train(
    config: TrainConfig,
    train_set: Dataset,
    eval_set: Dataset,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    stop_after_epoch: int | None = None,
    name: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> TrainResult:
    """Train one network as ``config`` describes.

    Args:
        config: network, method, optimiser, schedule, attack budget (``TrainConfig``).
        train_set, eval_set: datasets of ``(image [C, H, W] in [0, 1], label)``; the first
            ``config.eval_examples`` of ``eval_set`` are the per-epoch held-out slice.
        checkpoint_path: where the per-epoch checkpoint goes (None: no checkpoint).
        resume: continue from ``checkpoint_path`` if it exists (it must hold the same network).
        overwrite: train from scratch over an existing ``checkpoint_path``; without it (or ``resume``)
            an existing checkpoint is a ``ConfigError``, never silently replaced.
        device: ``"cpu"``, ``"cuda"``...; None picks CUDA when available. Under ``torchrun`` each
            process joins the process group and trains with DDP.
        stop_after_epoch: stop once this many epochs are done (as if killed after that epoch).
        name: label for the log lines (default: the method).
        progress: show tqdm bars (only on a terminal), the stage line and the per-epoch log lines
            (``dcspass.progress.quiet()`` silences them all).
    """
    checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
    _check_checkpoint_path(checkpoint_path, resume, overwrite)  # before any work, on every process
    ctx = init_distributed(device)
    name = name or config.method
    if config.batch_size % ctx.world_size:
        raise ConfigError(
            f"batch_size={config.batch_size} must be divisible by the {ctx.world_size} processes"
        )

    torch.manual_seed(config.seed)
    net = build_network(config).to(ctx.device)
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    net = net.to(memory_format=layout)
    optimizer = make_optimizer(net, config)
    scheduler = make_scheduler(optimizer, config)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resume and checkpoint_path is not None and checkpoint_path.exists():
        if ctx.is_main:
            remove_stale_temporaries(checkpoint_path)
        state = load_checkpoint(checkpoint_path)
        check_compatible(state, config, checkpoint_path)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = int(state["epoch"]), list(state["history"])
        restore_rng(state["rng"])
        log(f"[{name}] resumed from {checkpoint_path} after epoch {start_epoch}", ctx.is_main and progress)
    if ctx.rank:
        # Other processes draw their own taps and augmentations (weights come from rank 0 via DDP).
        torch.manual_seed(config.seed + 1000 * ctx.rank + start_epoch)

    model: nn.Module = net
    if ctx.distributed:
        model = DistributedDataParallel(net, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)
    if config.compile:
        model = torch.compile(model)
    method = make_method(config.method, config.eps, config.alpha, config.attack_steps)
    method.bind(net, compile=config.compile)

    sampler = EpochSampler(len(train_set), ctx, seed=config.seed, samples_per_epoch=config.samples_per_epoch)
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size // ctx.world_size,
        sampler=sampler,
        num_workers=config.workers,
        pin_memory=ctx.device.type == "cuda",
        drop_last=False,
    )
    eval_loader = _eval_loader(eval_set, config, ctx)
    epochs_done = start_epoch
    stage(
        f"[{name}] training epochs {start_epoch + 1}..{config.epochs} of {config.method} on {ctx.device}"
        + (f", checkpoint {checkpoint_path}" if checkpoint_path is not None else ""),
        ctx.is_main and progress and start_epoch < config.epochs,
    )
    last_epoch = config.epochs if stop_after_epoch is None else min(config.epochs, stop_after_epoch)
    for epoch in range(start_epoch, last_epoch):
        sampler.set_epoch(epoch)
        net.train()
        lr = optimizer.param_groups[0]["lr"]
        loss_sum = correct = seen = 0.0
        start, cpu_start = time.perf_counter(), time.process_time()
        batches = bar(loader, f"[{name}] epoch {epoch + 1}/{config.epochs}", ctx.is_main and progress)
        for x, y in batches:
            x, y = (
                x.to(ctx.device, non_blocking=True, memory_format=layout),
                y.to(ctx.device, non_blocking=True),
            )
            with torch.autocast(ctx.device.type, torch.bfloat16, enabled=config.precision == "bf16"):
                loss, logits = method.loss(model, x, y)
            if not math.isfinite(float(loss.detach())):
                raise DCSError(f"[{name}] loss became {float(loss)} at epoch {epoch + 1}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * y.numel()
            correct += float((logits.argmax(1) == y).sum())
            seen += y.numel()
        scheduler.step()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        eval_start = time.perf_counter()
        desc = f"[{name}] held-out evaluation, epoch {epoch + 1}"
        held_out = bar(eval_loader, desc, ctx.is_main and progress)
        clean, robust, total = paper_protocol_accuracy(
            net, held_out, config.eps, config.alpha, config.eval_steps, ctx.device, config.eval_draws
        )
        loss_sum, correct, seen, clean, robust, total = all_reduce_sum(
            [loss_sum, correct, seen, clean, robust, total], ctx
        )
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "loss": loss_sum / max(seen, 1),
            "train_acc": correct / max(seen, 1),
            "clean_acc": clean / max(total, 1),
            "pgd_acc": robust / max(total, 1),
            "eval_images": int(total),
            "eval_draws": config.eval_draws if config.is_dcs else 1,
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "eval_seconds": time.perf_counter() - eval_start,
        }
        history.append(record)
        epochs_done = epoch + 1
        log(
            f"[{name}] epoch {epoch + 1}/{config.epochs}",
            ctx.is_main and progress,
            loss=record["loss"],
            train_acc=record["train_acc"],
            clean_acc=record["clean_acc"],
            **{f"pgd{config.eval_steps}_acc": record["pgd_acc"]},
            lr=lr,
            seconds=round(seconds, 1),
            note=f"(held-out accuracy: {record['eval_images']} images, expected over "
            f"{plural(record['eval_draws'], 'draw')} of taps, paper-protocol attack)",
        )
        if checkpoint_path is not None and ctx.is_main:
            save_checkpoint(
                checkpoint_path,
                {
                    "config": config.to_dict(),
                    "model": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epochs_done,
                    "rng": capture_rng(),
                    "history": history,
                },
            )
        barrier(ctx)
    return TrainResult(net.eval(), config, history, checkpoint_path, epochs_done)
