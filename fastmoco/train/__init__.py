"""Training: the loop, the (compiled) step, optimizers, schedules, metrics. ``python -m fastmoco.train`` is the CLI.
``TrainConfig`` (the run's settings, in ``fastmoco.runs``) is handed on here, beside ``train`` that takes it.

The loop and the config (and torch with them: the config's choices come from the models' registries) load on
first use, so ``python -m fastmoco.train`` reaches the CLI's Ctrl-C handling before torch is imported."""
import importlib

from fastmoco.errors import ConfigError, TrainingDiverged

__all__ = ["ConfigError", "TrainConfig", "TrainingDiverged", "train"]


_LAZY = {"train": "fastmoco.train.loop", "TrainConfig": "fastmoco.runs.config"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fastmoco.train' has no attribute {name!r}")
