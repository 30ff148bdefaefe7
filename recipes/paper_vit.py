"""ViT-Tiny with a convolutional stem (Xiao et al. 2021) on CIFAR-10/100 (the paper's Table 7).

DCS replaces the second 3x3 conv of the stem (``stem.1.conv``, stride 2, admitted by Eq. 12) under
both placements. Paper: SGD, weight decay 5e-4, lr 0.01, batch 128; stage 1 trains the stem and head
on a pretrained ViT-Tiny (200 epochs, lr / 10 at 50 and 100), stage 2 fine-tunes everything with GSAT
for 90 epochs on a cosine schedule. No pretrained weights are downloaded here, so this recipe runs
stage 2's settings from scratch (noted in the report). CPU scale (the default): CIFAR-10, width 64, depth 4.
"""

from __future__ import annotations

import sys

from .common import Placement, RecipeSpec, main
from .paper_rn18 import EMBEDDED

VIT_AT = {
    "epochs": 90,
    "batch_size": 128,
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "cosine",
    "eps": 8 / 255,
    "alpha": 2 / 255,
    "attack_steps": 7,
    "eval_examples": 512,
}

STEM = Placement("index:2", "stem.1.conv", stride=2)

SPEC = RecipeSpec(
    name="paper_vit",
    arch="vit_convstem",
    datasets=("cifar10", "cifar100"),
    placements={"downsample": STEM, "paper": STEM},
    paper=VIT_AT,
    embedded={
        **EMBEDDED,
        "width": 64,
        "model_options": {"depth": 4},
        "schedule": "cosine",
        "lr": 0.05,
        "epochs": 3,
        "samples_per_epoch": 1024,
    },
    notes=(
        "the paper's stage 1 starts from a pretrained ViT-Tiny; without downloaded weights both networks "
        "train from scratch with stage 2's settings",
    ),
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
