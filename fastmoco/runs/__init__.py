"""The run layer every command stands on: a run's settings (``TrainConfig``, presets, validation), its directory
(claim, lock), its checkpoint format (safe loading, atomic writes), reading a run back, and the process group.
It imports only ``fastmoco.errors``, ``data``, ``models`` and ``ops``; ``train``, ``evaluate``, ``convert`` and
``cli`` import it."""
from fastmoco.errors import CheckpointError, ConfigError, UnsafeCheckpoint

from .config import FMNIST_DIR, PRESETS, TrainConfig

__all__ = ["CheckpointError", "ConfigError", "FMNIST_DIR", "PRESETS", "TrainConfig", "UnsafeCheckpoint"]
