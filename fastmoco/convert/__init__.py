"""Checkpoint interop: official MoCo v1/v2/v3 checkpoints (ResNets, v3 ViTs) in (``official``, ``official_v3``,
``vit_layout``); torchvision, detectron2, timm and the original MoCo v3 layout out (``formats``, ``official_v3``).
``fastmoco-convert`` is the CLI."""
from fastmoco.errors import ConvertError

from .formats import detectron2_key, timm_export, to_detectron2, to_torchvision
from .official import import_official
from .official_v3 import export_v3

__all__ = ["ConvertError", "detectron2_key", "export_v3", "import_official", "timm_export", "to_detectron2",
           "to_torchvision"]
