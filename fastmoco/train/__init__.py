"""Training: the loop, the (compiled) step, optimizers, schedules, metrics. ``python -m fastmoco.train`` is the CLI.
``TrainConfig`` (the run's settings, in ``fastmoco.runs``) is handed on here, beside ``train`` that takes it.

The loop (and torch with it) loads on first use, so ``python -m fastmoco.train`` reaches the CLI's Ctrl-C handling
before torch is imported."""
import importlib

from fastmoco.errors import ConfigError, TrainingDiverged
from fastmoco.runs.config import TrainConfig

__all__ = ["ConfigError", "TrainConfig", "TrainingDiverged", "train"]


def __getattr__(name):
    if name == "train":
        return getattr(importlib.import_module("fastmoco.train.loop"), name)
    raise AttributeError(f"module 'fastmoco.train' has no attribute {name!r}")
