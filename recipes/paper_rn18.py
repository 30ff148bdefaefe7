"""ResNet-18 on CIFAR-10/100 (the paper's Table 1 setup); the project's main job.

Paper scale (``--scale paper``): SGD lr 0.1, momentum 0.9, weight decay 5e-4, batch 128, 200 epochs,
lr / 10 at epochs 60 and 120; GSAT and the baseline train on PGD-7 (eps 8/255, step 2/255).
Placement ``downsample`` (default): ``layer2.0.conv1`` (``index:6``, stride 2, Table 9's best,
admitted by Eq. 12 at k=5, n=2). Placement ``paper``: ``layer1.0.conv1`` (``index:2``, stride 1),
which Eq. 12 rejects; it runs with ``check_bounds=False``.

CPU scale (the default, ``EMBEDDED``): CIFAR-10 from ``./data`` (``python -m dcspass data fetch
cifar10``), the same optimiser and training attack on a narrow ResNet-18 for a few short epochs; the
settings and how they were chosen are in docs/results.md. ``--dataset fashion_mnist`` runs the same
pipeline on the Fashion-MNIST stand-in.

``--preset gpu``: one GPU, one 10-minute command (epoch count estimated, not measured yet): the paper's
network at full width, bf16 autocast and channels_last, PGD-7 AT and DCS + GSAT on the class-balanced
CIFAR-10 subset (``data/cifar-10-subset``: 18,000 training and 1,000 test images, 55.7 MiB, made by
``python -m dcspass data subset cifar10``; it fits a 64 MiB working-tree transfer, where the full
training set's 150 MB does not; ``--data-dir data`` uses all 50,000 images), then both evaluation
protocols on the 1,000 test images at the ``default`` budget. ``--compile`` pays only over many epochs
(each network compiles for about a minute), so it is off.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dcspass.data import CIFAR10_SUBSET

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
}

# CPU scale: the settings docs/results.md measured and chose (main job within 10 minutes on 2 cores).
EMBEDDED = {
    "width": 8,
    "epochs": 5,
    "batch_size": 128,
    "samples_per_epoch": 4096,
    "milestone_fractions": (0.75,),
    "eval_examples": 128,
}

# Command-line defaults of ``--preset gpu`` (flags given on the command line win).
GPU = {
    "scale": "paper",
    "data_dir": Path("data") / CIFAR10_SUBSET,
    "dataset": "cifar10",
    "epochs": 10,
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
