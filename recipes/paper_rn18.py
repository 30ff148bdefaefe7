"""ResNet-18 on CIFAR-10/100 (the paper's Table 1 setup); the project's main job.

Paper scale (``--data-dir``): SGD lr 0.1, momentum 0.9, weight decay 5e-4, batch 128, 200 epochs,
lr / 10 at epochs 60 and 120; GSAT and the baseline train on PGD-7 (eps 8/255, step 2/255).
Placement ``downsample`` (default): ``layer2.0.conv1`` (``index:6``, stride 2, Table 9's best,
admitted by Eq. 12 at k=5, n=2). Placement ``paper``: ``layer1.0.conv1`` (``index:2``, stride 1),
which Eq. 12 rejects; it runs with ``check_bounds=False``.

Embedded default (no ``--data-dir``): Fashion-MNIST, ResNet-18 at width 8, 4 epochs of 2048 random
training images each, the same optimiser, lr / 10 for the last epoch.

``--preset gpu``: one GPU, one 10-minute command (epoch count estimated, not measured yet): the paper's
network at full width, bf16 autocast and channels_last, PGD-7 AT and DCS + GSAT on the whole Fashion-MNIST
training set (``--data-dir`` defaults to the system copy; ``--data-dir D --dataset cifar10`` runs CIFAR-10
unchanged), then both evaluation protocols on the first 1,000 test images at the ``default`` budget.
``--compile`` pays only over many epochs (each network compiles for about a minute), so it is off.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dcspass.data import FASHION_MNIST_DIR

from .common import Placement, RecipeSpec, main

CIFAR_AT = {
    "epochs": 200,
    "batch_size": 128,
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "multistep",
    "milestone_fractions": (60 / 200, 120 / 200),
    "eps": 8 / 255,
    "alpha": 2 / 255,
    "attack_steps": 7,
    "eval_examples": 512,
    "workers": 4,
}

EMBEDDED = {
    "width": 8,
    "epochs": 4,
    "batch_size": 128,
    "samples_per_epoch": 2048,
    "milestone_fractions": (0.75,),
    "eval_examples": 128,
    "workers": 0,
}

# Command-line defaults of ``--preset gpu`` (flags given on the command line win).
GPU = {
    "data_dir": FASHION_MNIST_DIR,
    "dataset": "fashion_mnist",
    "epochs": 4,
    "precision": "bf16",
    "channels_last": True,
    "examples": 1000,
    "budget": "default",
    "fig4a": False,
    "out": Path("runs/paper_rn18_gpu"),
}

SPEC = RecipeSpec(
    name="paper_rn18",
    arch="resnet18",
    datasets=("cifar10", "cifar100"),
    placements={
        "downsample": Placement("index:6", "layer2.0.conv1", stride=2),
        "paper": Placement("index:2", "layer1.0.conv1", stride=1, check_bounds=False),
    },
    paper=CIFAR_AT,
    embedded=EMBEDDED,
    presets={"gpu": GPU},
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
