"""Training: TrainConfig, the loop, checkpoints, kNN monitor, metrics. ``python -m fastmoco.train`` is the CLI."""
from .config import ConfigError, TrainConfig
from .loop import TrainingDiverged, train

__all__ = ["ConfigError", "TrainConfig", "TrainingDiverged", "train"]
