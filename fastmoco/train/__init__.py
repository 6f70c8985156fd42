"""Training: TrainConfig, the loop, checkpoints, kNN monitor, metrics. ``python -m fastmoco.train`` is the CLI.

The loop (and torch with it) loads on first use, so ``python -m fastmoco.train`` reaches the CLI's Ctrl-C handling
before torch is imported."""
import importlib

from .config import ConfigError, TrainConfig

__all__ = ["ConfigError", "TrainConfig", "TrainingDiverged", "train"]


def __getattr__(name):
    if name in ("TrainingDiverged", "train"):
        return getattr(importlib.import_module("fastmoco.train.loop"), name)
    raise AttributeError(f"module 'fastmoco.train' has no attribute {name!r}")
