"""Training: clean, PGD-AT and GSAT in one loop; checkpoints; DDP under torchrun.

``train(TrainConfig(...), train_set, eval_set, checkpoint_path=...)`` is the entry point the recipes
use; ``checkpoint.load_model(path)`` rebuilds a trained network for evaluation.
"""

from __future__ import annotations

from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .config import TrainConfig, build_network
from .engine import TrainResult, train
from .methods import GSAT, CleanTraining, PGDAdversarialTraining, TrainingMethod, make_method
from .monitor import paper_protocol_accuracy

__all__ = [
    "GSAT",
    "CleanTraining",
    "PGDAdversarialTraining",
    "TrainConfig",
    "TrainResult",
    "TrainingMethod",
    "build_network",
    "load_checkpoint",
    "load_model",
    "make_method",
    "paper_protocol_accuracy",
    "save_checkpoint",
    "train",
]
