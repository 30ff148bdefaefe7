"""ResNet-50 on ImageNet (Table 2 setup), torchvision's network without pretrained weights.

Paper: batch 512, SGD lr 0.1, momentum 0.9, weight decay 1e-4, cosine schedule, 90 epochs of
adversarial training with PGD-10 at eps 4/255, step 4/255 (followed here as stated). Placement
``downsample``: ``layer2.0.conv2`` (the first stride-2 3x3 conv of torchvision's v1.5 layout);
``paper``: the 2nd conv in execution order, which on torchvision's ResNet-50 is the 1x1
``layer1.0.conv1`` (grown to k x k), run with ``check_bounds=False``.
CPU scale (the default): CIFAR-10 (10 classes, 32 x 32) at width_per_group 8, a few short epochs;
``--scale paper`` runs ImageNet from ``--data-dir``.
"""

from __future__ import annotations

import sys

from .common import Placement, RecipeSpec, main
from .paper_rn18 import EMBEDDED

IMAGENET_AT = {
    "epochs": 90,
    "batch_size": 512,
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "schedule": "cosine",
    "eps": 4 / 255,
    "alpha": 4 / 255,
    "attack_steps": 10,
    "eval_examples": 512,
}

SPEC = RecipeSpec(
    name="paper_rn50",
    arch="resnet50",
    datasets=("imagenet",),
    placements={
        "downsample": Placement("name:layer2.0.conv2", "layer2.0.conv2", stride=2),
        "paper": Placement("index:2", "layer1.0.conv1", stride=1, check_bounds=False),
    },
    paper=IMAGENET_AT,
    embedded={**EMBEDDED, "schedule": "cosine", "epochs": 3, "samples_per_epoch": 1024, "batch_size": 128},
    notes=(
        "the paper fine-tunes ResNet-50 adversarially; no pretrained weights are downloaded here, so both "
        "networks train from scratch",
    ),
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
