"""fastmoco: MoCo v1/v2 with fused InfoNCE, EMA and queue ops.

Submodules load on first use, so ``from fastmoco import ops`` pulls in only the ops.
"""
import importlib

__version__ = "0.1.0"
_LAZY = {"MoCo": "fastmoco.models.moco", "InfoNCE": "fastmoco.ops", "TrainConfig": "fastmoco.runs.config"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in ("ops", "models", "data", "train", "cli", "kernels"):
        return importlib.import_module(f"fastmoco.{name}")
    raise AttributeError(f"module 'fastmoco' has no attribute {name!r}")
