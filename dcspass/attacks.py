"""The attack training and evaluation both build: torchattacks' L-inf PGD, made one way.

Lives below both engines so that training (PGD-AT, GSAT, the training monitor) does not import the
evaluation engine, nor evaluation the training stack.
"""

from __future__ import annotations

import torchattacks
from torch import nn

__all__ = ["make_pgd"]


def make_pgd(
    model: nn.Module, eps: float, alpha: float, steps: int, random_start: bool = True
) -> torchattacks.PGD:
    """torchattacks PGD (L-inf, pixels in [0, 1]) that puts ``model`` in eval mode while it attacks.

    Eval mode: BatchNorm uses its running statistics and is not updated by the attack's forwards
    (torchattacks' default, set explicitly so a change of default cannot flip it).

    Args:
        model: the classifier, logits ``[B, classes]`` for inputs ``[B, C, H, W]`` in [0, 1].
        eps: L-inf radius (8/255 in the paper); alpha: step size; steps: iterations.
        random_start: start from a uniform point of the eps-ball (Madry et al.), not from ``x``.
    """
    attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start)
    attack.set_model_training_mode(model_training=False)
    return attack
