"""torchvision's Faster R-CNN / Mask R-CNN with a feature pyramid over any ResNet or ViT fastmoco builds.

ViTs (``SimplePyramid``, the simple feature pyramid of ViTDet, Li et al. 2022): a plain ViT has one map, its
patch tokens at stride p (the patch size) after the last block and the final norm. Four levels are built from it
in parallel, no top-down path: at strides p/4 and p/2 by transposed convolutions (two 2x2/2, or one), p as it is,
2p and 4p by max-pooling; levels below stride 2 are left out and coarser ones added (vit_fmnist, p=4: strides 2,
4, 8, 16; ViT-S/16: 4, 8, 16, 32). Each level then has a 1x1 and a 3x3 convolution to the pyramid's channels
(with BatchNorm unless the norm is "frozen"), and the fifth level ("pool") is a stride-2 subsampling of the last,
as the ResNet pyramid's. The position embedding is the fixed sin-cos one, computed for each input's patch grid.

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


class SimplePyramid(nn.Module):
    """A ViT's last map as a pyramid (see the module's text): {"0".."3", "pool"} -> (N, out_channels, h, w)."""

    FACTORS = (0.25, 0.5, 1, 2, 4, 8)  # candidate level strides as multiples of the patch size

    def __init__(self, vit: nn.Module, out_channels: int, norm=None):
        super().__init__()
        self.body = vit
        p, dim = vit.patch_size, vit.feat_dim
        factors = [f for f in self.FACTORS if p * f >= 2][:4]
        self.strides = [int(p * f) for f in factors] + [int(p * factors[-1] * 2)]
        self.scales = nn.ModuleList(self._rescale(f, dim) for f in factors)
        chans = [self._channels(f, dim) for f in factors]
        self.heads = nn.ModuleList(nn.Sequential(
            nn.Conv2d(c, out_channels, 1, bias=norm is None), *([norm(out_channels)] if norm else []),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=norm is None),
            *([norm(out_channels)] if norm else [])) for c in chans)
        self.out_channels = out_channels

    @staticmethod
    def _channels(f: float, dim: int) -> int:
        return dim // 4 if f == 0.25 else dim // 2 if f == 0.5 else dim

    @staticmethod
    def _rescale(f: float, dim: int) -> nn.Module:
        if f == 0.25:
            return nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, 2), nn.GroupNorm(1, dim // 2), nn.GELU(),
                                 nn.ConvTranspose2d(dim // 2, dim // 4, 2, 2))
        if f == 0.5:
            return nn.ConvTranspose2d(dim, dim // 2, 2, 2)
        if f == 1:
            return nn.Identity()
        return nn.MaxPool2d(int(f), int(f))

    def patch_map(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, D, H/p, W/p): the patch tokens after the final norm, class token dropped."""
        n, _, h, w = x.shape
        p = self.body.patch_size
        tokens = self.body.forward_features(x)  # (N, prefix + h/p * w/p, D)
        prefix = tokens.shape[1] - (h // p) * (w // p)
        return tokens[:, prefix:].transpose(1, 2).reshape(n, -1, h // p, w // p)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        fmap = self.patch_map(x)  # (N, D, h, w) at stride p
        feats = OrderedDict((name, head(scale(fmap)))
                            for name, scale, head in zip(LEVELS, self.scales, self.heads))
        feats["pool"] = nn.functional.max_pool2d(feats[LEVELS[-1]], 1, 2)
        return feats


def default_fpn_channels(resnet: nn.Module) -> int:
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
    """``kind`` over ``resnet`` (a fastmoco ResNet, or a fastmoco ViT, which ``stem`` does not concern) for
    ``num_classes`` object classes (plus the background); see the module's text.
    ``heads``: torchvision's RPN / RoI-head settings (e.g. ``rpn_post_nms_top_n_train``, ``box_batch_size_per_image``)."""
    if kind not in DETECTORS:
        raise ValueError(f"unknown detector {kind!r}; choose one of {DETECTORS}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")
    if norm == "frozen":
        freeze_bn(resnet)
    out = fpn_channels or default_fpn_channels(resnet)
    pyramid_norm = None if norm == "frozen" else nn.BatchNorm2d
    if isinstance(resnet, WideResNet):
        backbone = ResNetFPN(resnet, stem, out, pyramid_norm)
    else:  # a ViT: its patch map through the simple feature pyramid (a ViT has no BN to freeze)
        backbone = SimplePyramid(resnet, out, pyramid_norm)
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


def lr_groups(model: nn.Module, decay: float = 1.0) -> list[dict]:
    """The detector's trained parameters as optimizer groups, each with an ``lr_scale``. ``decay`` < 1 is
    layer-wise lr decay over a ViT backbone (BEiT's, which ViTDet fine-tunes with): block i of L gets
    decay^(L - i), the patch embedding and class token decay^(L + 1), the rest (the final norm, the pyramid, the
    heads) 1. ``decay`` 1: one group. A ResNet backbone has no blocks to decay over: ValueError."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if decay == 1.0:
        return [dict(params=[p for _, p in named], lr_scale=1.0)]
    if not isinstance(model.backbone, SimplePyramid):
        raise ValueError("layer-wise lr decay (--lr-decay) applies to ViT backbones (their blocks); this detector's "
                         "backbone is a ResNet: leave --lr-decay at 1")
    depth = len(model.backbone.body.blocks)
    groups: dict[float, list] = {}
    for name, p in named:
        parts = name.split(".")
        if parts[:2] != ["backbone", "body"] or parts[2] == "norm":
            layer = depth + 1
        elif parts[2] == "blocks":
            layer = int(parts[3]) + 1
        else:  # patch_embed, cls_token, pos_embed
            layer = 0
        groups.setdefault(decay ** (depth + 1 - layer), []).append(p)
    return [dict(params=ps, lr_scale=scale) for scale, ps in sorted(groups.items())]

