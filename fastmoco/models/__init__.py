from .backbones import ARCHS, STEMS, SplitBatchNorm2d, WideResNet, build_backbone, has_batch_norm, known_arch
from .detection import DETECTORS, NORMS, build_detector
from .heads import HEADS, bn_mlp, projection_head
from .methods import METHODS, Method, build_method, preset_table
from .moco import MoCo
from .mocov3 import MoCoV3
from .vit import VITS, is_timm, is_vit, pos_embed_table, sincos_2d
from .weights import load_exactly, mismatch

__all__ = ["ARCHS", "DETECTORS", "HEADS", "METHODS", "Method", "NORMS", "STEMS", "VITS", "MoCo", "MoCoV3", "SplitBatchNorm2d",
           "WideResNet", "bn_mlp", "build_backbone", "build_detector", "build_method", "has_batch_norm",
           "is_timm", "is_vit", "known_arch",
           "load_exactly", "mismatch", "pos_embed_table", "preset_table", "projection_head", "sincos_2d"]
