"""Checkpoint interop: official MoCo v1/v2/v3 checkpoints in (``official``), torchvision and detectron2 out
(``formats``). ``fastmoco-convert`` is the CLI."""
from .formats import detectron2_key, to_detectron2, to_torchvision
from .official import ConvertError, import_official

__all__ = ["ConvertError", "detectron2_key", "import_official", "to_detectron2", "to_torchvision"]
