from .backbones import ARCHS, STEMS, SplitBatchNorm2d, WideResNet, build_backbone
from .heads import HEADS, bn_mlp, projection_head
from .methods import METHODS, build_method
from .moco import MoCo
from .mocov3 import MoCoV3
from .weights import load_exactly, mismatch

__all__ = ["ARCHS", "HEADS", "METHODS", "STEMS", "MoCo", "MoCoV3", "SplitBatchNorm2d", "WideResNet", "bn_mlp",
           "build_backbone", "build_method", "load_exactly", "mismatch", "projection_head"]
