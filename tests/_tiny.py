"""The tiny training setup the engine tests share: a width-4 ResNet-18 on a Fashion-MNIST slice."""

from __future__ import annotations

from dcspass.training import TrainConfig


def tiny_config(method: str = "gsat", **overrides) -> TrainConfig:
    """A config that trains in seconds on one thread; ``overrides`` replace any field."""
    base = dict(
        arch="resnet18",
        in_channels=1,
        width=4,
        dataset="fashion_mnist",
        method=method,
        policy="index:6" if method in ("gsat", "frozen_pgd_at") else None,
        batch_size=32,
        lr=0.05,
        attack_steps=2,
        eval_steps=2,
        eval_examples=16,
        epochs=1,
    )
    base.update(overrides)
    return TrainConfig(**base)
