"""The training configuration, and the network it describes.

A ``TrainConfig`` is all a run needs besides data: network, DCS placement, method, optimiser,
schedule, attack budget. Its ``to_dict()`` is stored in every checkpoint, and ``build_network``
rebuilds the same (untrained) network from that dict, which is how ``load_model`` works.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..models import build_model
from ..validation import positive_int

__all__ = ["METHODS", "SCHEDULES", "TrainConfig", "build_network"]

METHODS = ("gsat", "frozen_pgd_at", "pgd_at", "clean")
SCHEDULES = ("multistep", "cosine")
PRECISIONS = ("fp32", "bf16")  # bf16: the training step (attack, forward, backward) under bf16 autocast


@dataclass
class TrainConfig:
    """One training run. Defaults are the paper's CIFAR ResNet-18 recipe.

    Network: ``arch``, ``num_classes``, ``in_channels``, ``width`` (None = paper width),
    ``model_options`` (architecture keywords such as ``image_size``).
    DCS: ``policy`` (None = plain network), ``n``, ``k``, ``check_bounds``.
    Method: ``"gsat"`` or ``"frozen_pgd_at"`` (GSAT without excluding the attacked taps; both need a
    policy), ``"pgd_at"`` or ``"clean"``; the training attack is PGD with
    ``eps``, ``alpha`` (step) and ``attack_steps`` on the [0, 1] pixel scale.
    Optimiser: SGD ``lr``, ``momentum``, ``weight_decay``, global ``batch_size``; ``schedule``
    ``"multistep"`` (x ``gamma`` at each of ``milestones``, in epochs) or ``"cosine"`` over ``epochs``.
    Monitoring: each epoch, clean and PGD-``eval_steps`` accuracy on ``eval_examples`` held-out
    examples (paper protocol), expected over ``eval_draws`` fresh draws of taps per chunk of images.
    ``samples_per_epoch`` (None = all) draws a fresh subset each epoch.
    Speed: ``compile`` (torch.compile), ``precision`` (``"bf16"``: the training step under bf16
    autocast; weights and optimiser stay fp32), ``channels_last`` (network and batches in that layout).
    """

    arch: str = "resnet18"
    num_classes: int = 10
    in_channels: int = 3
    width: int | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    dataset: str = "cifar10"
    method: str = "gsat"
    policy: str | None = "index:6"
    n: int = 2
    k: int | None = 5
    check_bounds: bool = True
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "multistep"
    milestones: list[int] = field(default_factory=lambda: [60, 120])
    gamma: float = 0.1
    eps: float = 8 / 255
    alpha: float = 2 / 255
    attack_steps: int = 7
    eval_steps: int = 20
    eval_examples: int = 512
    eval_draws: int = 8
    samples_per_epoch: int | None = None
    seed: int = 0
    compile: bool = False
    workers: int = 0
    precision: str = "fp32"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.method in ("gsat", "frozen_pgd_at") and self.policy is None:
            raise ConfigError(f"method={self.method!r} trains a DCS network: give a policy (e.g. 'index:6')")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name in ("epochs", "batch_size", "attack_steps", "eval_steps", "eval_draws", "n"):
            positive_int(getattr(self, name), name)
        if self.eps > 1 or self.alpha > 1:
            raise ConfigError(
                f"eps={self.eps} / alpha={self.alpha} look like the 0-255 scale; pixels are in [0, 1], "
                "so write 8/255"
            )

    @property
    def is_dcs(self) -> bool:
        return self.policy is not None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (what checkpoints store)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of ``to_dict``; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown TrainConfig fields {unknown}; known: {sorted(names)}")
        return cls(**data)


def build_network(config: TrainConfig | dict[str, Any]) -> nn.Module:
    """A freshly initialised network for ``config``: the architecture, then the DCS pass if a policy is set.

    DCS kernels are initialised afresh (``init="fresh"``): the paper trains DCS networks from scratch.
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    model = build_model(
        config.arch, config.num_classes, config.in_channels, config.width, **config.model_options
    )
    if config.policy is None:
        return model
    from ..transformation import transform

    return transform(
        model, policy=config.policy, n=config.n, k=config.k, check_bounds=config.check_bounds, init="fresh"
    )
