"""WideResNet-34-10 on CIFAR-10/100 (Table 1): the ResNet-18 recipe's hyperparameters on WRN-34-10.

Placement ``downsample``: ``block2.layer.0.conv1`` (the first stride-2 3x3 conv); ``paper``: the 2nd
conv, ``block1.layer.0.conv1`` (stride 1, rejected by Eq. 12, run with ``check_bounds=False``).
CPU scale (the default): CIFAR-10, WRN-34-1 (widen factor 1), a few short epochs.
"""

from __future__ import annotations

import sys

from .common import Placement, RecipeSpec, main
from .paper_rn18 import CIFAR_AT, EMBEDDED

SPEC = RecipeSpec(
    name="paper_wrn34",
    arch="wrn34",
    datasets=("cifar10", "cifar100"),
    placements={
        "downsample": Placement("name:block2.layer.0.conv1", "block2.layer.0.conv1", stride=2),
        "paper": Placement("index:2", "block1.layer.0.conv1", stride=1, check_bounds=False),
    },
    paper=CIFAR_AT,
    embedded={**EMBEDDED, "width": 1, "epochs": 3, "samples_per_epoch": 1024, "milestone_fractions": (0.67,)},
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
