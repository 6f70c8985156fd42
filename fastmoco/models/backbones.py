"""Backbones: torchvision's ResNet built at any base width, with an optional small-image stem.

The network *is* a ``torchvision.models.ResNet`` (same blocks, same ``_make_layer``, same parameter names), so at
width 64 with the ImageNet stem and 3 input channels its state_dict loads into ``torchvision.models.resnetXX()``.
"""
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from .vit import build_timm, build_vit, is_timm, is_vit

ARCHS = {
    "resnet10": (BasicBlock, [1, 1, 1, 1]),  # not in torchvision: a CPU-sized ResNet-18 with one block per stage
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}
STEM_STRIDE = {"small": 1, "small-s2": 2, "imagenet": 4}  # how much each stem shrinks the image side
STEMS = tuple(STEM_STRIDE)
STEM_NOTES = {"small": "3x3/1", "small-s2": "3x3/2", "imagenet": "7x7/2 + max-pool"}


class WideResNet(ResNet):
    """torchvision ResNet with base width ``width`` (64 = the standard nets) and a choice of stem.

    stem "imagenet": 7x7/2 conv + max-pool (torchvision's); "small": 3x3/1 conv, no pool (CIFAR/MNIST-sized
    inputs); "small-s2": 3x3/2 conv, no pool (a quarter of the compute at 28 px). ``fc`` is Identity: the forward
    returns (N, feat_dim) pooled features.
    """

    def __init__(self, arch: str = "resnet18", width: int = 64, stem: str = "small", in_channels: int = 3,
                 norm_layer=None, zero_init_residual: bool = False):
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; choose one of {STEMS}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        nn.Module.__init__(self)
        block, layers = ARCHS[arch]
        self._norm_layer = norm_layer or nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 3, 2 if stem == "small-s2" else 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = self._norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Identity()
        self.feat_dim = width * 8 * block.expansion
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:  # each residual branch starts as zero: every block the identity (torchvision's option)
            for mod in self.modules():
                if isinstance(mod, (Bottleneck, BasicBlock)):
                    nn.init.zeros_(mod.bn3.weight if isinstance(mod, Bottleneck) else mod.bn2.weight)


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics come from ``num_splits`` independent sub-batches.

    With the key batch shuffled, a query and its positive key are normalised with statistics of different
    sub-batches, so the BN statistics cannot leak which key is the positive (the single-device stand-in for
    MoCo's shuffle-BN). Eval mode is plain BatchNorm with the averaged running statistics.
    """

    def __init__(self, num_features: int, num_splits: int = 8, **kw):
        super().__init__(num_features, **kw)
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        s = self.num_splits
        if not self.training or s == 1:
            return super().forward(x)
        if n % s:
            raise ValueError(f"SplitBatchNorm2d: batch {n} is not divisible by num_splits={s}")
        running_mean = self.running_mean.repeat(s)  # (s*C,)
        running_var = self.running_var.repeat(s)
        out = nn.functional.batch_norm(
            x.reshape(n // s, c * s, h, w), running_mean, running_var,  # each split is its own set of channels
            self.weight.repeat(s), self.bias.repeat(s), True, self.momentum, self.eps,
        ).view(n, c, h, w)
        with torch.no_grad():
            self.running_mean.copy_(running_mean.view(s, c).mean(0))
            self.running_var.copy_(running_var.view(s, c).mean(0))
        return out


def split_batch_norms(net: nn.Module, splits: int, arch: str) -> nn.Module:
    """Every ``nn.BatchNorm2d`` of ``net`` replaced by a ``SplitBatchNorm2d`` holding its parameters and running
    statistics (the BN guard for any backbone, timm's included). A BatchNorm subclass that adds its own work (timm's
    BatchNormAct2d fuses an activation) cannot be split faithfully and is refused, as is a net without BatchNorm
    (nothing to guard: a ``bn_splits`` there would be a guard that is not there)."""
    found = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if not found:
        raise ValueError(f"--bn-splits {splits}: {arch} has no BatchNorm2d to split (its statistics cannot leak the "
                         "positive pair); pass --bn-splits 1")
    other = next((name for name, m in found if type(m) not in (nn.BatchNorm2d, SplitBatchNorm2d)), None)
    if other is not None:
        raise ValueError(f"--bn-splits {splits}: {arch}'s {other} is a {type(dict(found)[other]).__name__}, a "
                         "BatchNorm that Split-BN cannot stand in for; pass --bn-splits 1 and train it under "
                         "torchrun (shuffle-BN) or --sync-bn")
    for name, bn in found:
        split = SplitBatchNorm2d(bn.num_features, splits, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                                 track_running_stats=bn.track_running_stats, device=bn.running_mean.device
                                 if bn.running_mean is not None else None)
        split.load_state_dict(bn.state_dict())
        parent, _, leaf = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, leaf, split)
    return net


def has_batch_norm(arch: str) -> bool:
    """Whether ``arch``'s backbone normalises with BatchNorm (what Split-BN guards); a timm model is built on the
    meta device to look."""
    if arch in ARCHS:
        return True
    if is_vit(arch):
        return False
    with torch.device("meta"):
        net = build_timm(arch, 3)
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def build_backbone(arch: str, width: int, stem: str, in_channels: int, bn_splits: int = 1,
                   zero_init_residual: bool = False, freeze_patch_embed: bool = True) -> nn.Module:
    """The backbone ``arch`` names: a ResNet of ``ARCHS`` (at ``width``, with ``stem``), a ViT of ``VITS`` or
    ``timm:NAME``; each has ``feat_dim`` and returns (N, feat_dim) features; ``bn_splits`` > 1 puts Split-BN in
    place of every BatchNorm."""
    if is_vit(arch) or is_timm(arch):
        net = build_vit(arch, in_channels, freeze_patch_embed) if is_vit(arch) else build_timm(arch, in_channels)
        return split_batch_norms(net, bn_splits, arch) if bn_splits > 1 else net
    norm = (lambda c: SplitBatchNorm2d(c, bn_splits)) if bn_splits > 1 else None
    return WideResNet(arch, width, stem, in_channels, norm_layer=norm, zero_init_residual=zero_init_residual)


def known_arch(arch: str) -> bool:
    return arch in ARCHS or is_vit(arch) or is_timm(arch)
