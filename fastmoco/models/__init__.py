from .backbones import ARCHS, STEMS, SplitBatchNorm2d, WideResNet, build_backbone
from .heads import projection_head
from .moco import MoCo

__all__ = ["ARCHS", "STEMS", "MoCo", "SplitBatchNorm2d", "WideResNet", "build_backbone", "projection_head"]
