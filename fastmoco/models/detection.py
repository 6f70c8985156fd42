"""torchvision's Faster R-CNN / Mask R-CNN with a feature pyramid over any ResNet fastmoco builds.

The pyramid takes the four stages' outputs (channels ``width * 2**i * expansion``) plus a max-pooled level, as
torchvision's ``resnet_fpn_backbone`` does; the levels' strides follow from the stem (``STEM_STRIDE``: 1, 2 or 4,
doubling per stage), and each level's anchors are 8 x its stride (torchvision's 32..512 at strides 4..64), aspect
ratios 0.5, 1, 2. ``image_size`` fixes the resize (torchvision's min_size; max_size in COCO's 1333/800 ratio).

Normalisation (``NORMS``): "frozen" replaces the backbone's BatchNorm by ``FrozenBatchNorm2d`` with the pre-trained
statistics (torchvision's and detectron2's default for supervised backbones; the FPN has none); "bn" trains the
backbone's BN and puts BN in the FPN (the MoCo paper's choice: its features' scales differ from supervised ones);
"syncbn" is "bn" with statistics over all processes (torchrun on CUDA; the paper's setting).
"""
from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from .backbones import STEM_STRIDE, WideResNet

NORMS = ("bn", "frozen", "syncbn")
DETECTORS = ("maskrcnn", "fasterrcnn")
LEVELS = ("0", "1", "2", "3")  # the four stages' pyramid levels; "pool" is the fifth


class ResNetFPN(nn.Module):
    """A fastmoco ResNet's four stages through a feature pyramid: {"0".."3", "pool"} -> (N, out_channels, h, w)."""

    def __init__(self, resnet: WideResNet, stem: str, out_channels: int, fpn_norm=None):
        super().__init__()
        self.body = resnet
        widths = [stage[-1].conv3.out_channels if hasattr(stage[-1], "conv3") else stage[-1].conv2.out_channels
                  for stage in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)]
        self.in_channels_list = widths
        self.strides = [STEM_STRIDE[stem] * 2 ** i for i in range(4)] + [STEM_STRIDE[stem] * 16]
        self.fpn = FeaturePyramidNetwork(widths, out_channels, extra_blocks=LastLevelMaxPool(), norm_layer=fpn_norm)
        self.out_channels = out_channels

    def stages(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))  # the stem in torchvision's order (conv, BN, ReLU, pool)
        feats = OrderedDict()
        for name, stage in zip(LEVELS, (b.layer1, b.layer2, b.layer3, b.layer4)):
            x = stage(x)
            feats[name] = x
        return feats

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(self.stages(x))


def default_fpn_channels(resnet: WideResNet) -> int:
    """Half the last stage's channels, at most torchvision's 256 (ResNet-18/50: 256; the CPU default resnet10 at
    width 16: 64, which with 64 sampled RoIs per image took a 128 px, batch-8 Mask R-CNN step from 1.40 s to
    0.60 s on 2 Xeon cores, RoIAlign's backward being a third of it)."""
    return min(256, resnet.feat_dim // 2)


def freeze_bn(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d of ``module`` replaced by a FrozenBatchNorm2d holding its statistics and affine terms."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            freeze_bn(child)
    return module


def build_detector(resnet: WideResNet, stem: str, num_classes: int, kind: str = "maskrcnn", norm: str = "bn",
                   image_size: int = 800, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                   fpn_channels: int | None = None, **heads) -> nn.Module:
    """``kind`` over ``resnet`` for ``num_classes`` object classes (plus the background); see the module's text.
    ``heads``: torchvision's RPN / RoI-head settings (e.g. ``rpn_post_nms_top_n_train``, ``box_batch_size_per_image``)."""
    if kind not in DETECTORS:
        raise ValueError(f"unknown detector {kind!r}; choose one of {DETECTORS}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")
    if norm == "frozen":
        freeze_bn(resnet)
    out = fpn_channels or default_fpn_channels(resnet)
    backbone = ResNetFPN(resnet, stem, out, None if norm == "frozen" else nn.BatchNorm2d)
    anchors = AnchorGenerator(tuple((8 * s,) for s in backbone.strides), ((0.5, 1.0, 2.0),) * 5)
    common = dict(min_size=image_size, max_size=round(image_size * 1333 / 800), image_mean=list(mean),
                  image_std=list(std), rpn_anchor_generator=anchors,
                  box_roi_pool=MultiScaleRoIAlign(list(LEVELS), 7, 2), **heads)
    if kind == "fasterrcnn":
        model = FasterRCNN(backbone, num_classes + 1, **common)
    else:
        model = MaskRCNN(backbone, None, box_predictor=FastRCNNPredictor(1024, num_classes + 1),  # 1024: the box head's
                         mask_roi_pool=MultiScaleRoIAlign(list(LEVELS), 14, 2),
                         mask_head=MaskRCNNHeads(out, (out,) * 4, 1),
                         mask_predictor=MaskRCNNPredictor(out, out, num_classes + 1), **common)
    if norm == "syncbn":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model
