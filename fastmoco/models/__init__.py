from .backbones import ARCHS, STEMS, SplitBatchNorm2d, WideResNet, build_backbone
from .heads import projection_head
from .moco import MoCo
from .weights import load_exactly, mismatch

__all__ = ["ARCHS", "STEMS", "MoCo", "SplitBatchNorm2d", "WideResNet", "build_backbone", "load_exactly", "mismatch",
           "projection_head"]
