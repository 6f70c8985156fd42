"""Where the detector's backbone comes from: a fastmoco run (trained or imported with fastmoco-convert: an original
MoCo v3 ViT checkpoint goes through ``fastmoco-convert import`` first), a ResNet state_dict with torchvision names
(``export/backbone.pt``, torchvision's own weights, a supervised net), a ViT state_dict with timm / MoCo v3 names
(its stored position table must be the fixed sin-cos one: the detector recomputes it for each image's patch
grid), or ``random`` (the architecture's own initialisation). ResNets get the FPN, fastmoco's ViTs (vit_small,
vit_base, vit_fmnist) the simple feature pyramid; other timm models are refused."""
import os
from dataclasses import dataclass

from fastmoco.errors import ConfigError, DataError, check_choice
from fastmoco.models import ARCHS, STEMS, VITS, WideResNet, build_backbone, load_exactly

RANDOM = "random"


@dataclass
class Backbone:
    resnet: WideResNet  # or one of fastmoco's ViTs
    stem: str  # a ViT has none: ""
    in_channels: int
    mean: tuple | None  # None: not known (a plain state_dict): the caller takes the training images' statistics
    std: tuple | None
    described: str


def _not_wrappable(arch: str, where: str) -> ConfigError:
    return ConfigError(f"{where}: the detector wraps fastmoco's ResNets ({', '.join(ARCHS)}) and ViTs "
                       f"({', '.join(VITS)}), not {arch} (a timm model's feature maps are not known to it)")


def _network(arch: str, width: int, stem: str, in_channels: int):
    """A ResNet or one of fastmoco's ViTs, every layer trainable (the patch projection included: a detector
    fine-tunes all layers)."""
    if arch in ARCHS:
        return WideResNet(arch, width, stem, in_channels)
    return build_backbone(arch, width, stem, in_channels, freeze_patch_embed=False)


def _from_run(path: str) -> Backbone:
    from fastmoco.runs.read import backbone_state_dict, read_run

    state, cfg, meta = read_run(path)
    if cfg.arch not in ARCHS and cfg.arch not in VITS:
        raise _not_wrappable(repr(cfg.arch), path)
    net = _network(cfg.arch, cfg.width, cfg.stem, meta["in_channels"])
    load_exactly(net, backbone_state_dict(state["model"]), f"the backbone in {path}", ConfigError)
    shape = f"width {cfg.width} stem {cfg.stem}" if cfg.arch in ARCHS else f"patch {net.patch_size}"
    return Backbone(net, cfg.stem if cfg.arch in ARCHS else "", meta["in_channels"], tuple(meta["mean"]),
                    tuple(meta["std"]), f"{path}: {cfg.method} {cfg.arch} {shape}")


def _from_state_dict(state: dict, path: str, stem: str | None) -> Backbone:
    from fastmoco.errors import ConvertError
    from fastmoco.models.shape import infer_resnet, is_vit_state_dict
    from fastmoco.runs.read import plain_backbone

    sd = {k.removeprefix("module."): v for k, v in plain_backbone(state).items()}
    if is_vit_state_dict(sd):
        return _vit_from_state_dict(sd, path)
    if "conv1.weight" not in sd:
        raise _not_wrappable(f"a non-ResNet state_dict (keys {', '.join(list(sd)[:2])}, ...)", path)
    try:
        shape = infer_resnet(sd)
    except ConvertError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    stem = stem or shape["stem"]  # a 3x3 stem's stride is not in the weights: --stem small-s2 says it
    resnet = WideResNet(shape["arch"], shape["width"], stem, shape["in_channels"])
    load_exactly(resnet, sd, f"the backbone in {path}", ConfigError)
    return Backbone(resnet, stem, shape["in_channels"], None, None,
                    f"{path}: state_dict of a {shape['arch']} width {shape['width']} stem {stem}")


def _vit_from_state_dict(sd: dict, path: str) -> Backbone:
    """A ViT state_dict with timm / MoCo v3 names (a timm classifier's ``head.*`` left out)."""
    from fastmoco.errors import ConvertError
    from fastmoco.models.shape import drop_pos_embed, infer_vit

    sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    try:
        shape = infer_vit(sd)
        sd = drop_pos_embed(sd, f"{path}: its pos_embed", ConvertError)
    except ConvertError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    net = _network(shape["arch"], 0, "", shape["in_channels"])
    load_exactly(net, sd, f"the backbone in {path}", ConfigError)
    return Backbone(net, "", shape["in_channels"], None, None, f"{path}: state_dict of a {shape['arch']}")


def load_source(source: str, arch: str, width: int, stem: str | None, in_channels: int) -> Backbone:
    """The backbone ``source`` names (see the module's text); ``arch`` / ``width`` / ``in_channels`` shape
    ``random``, ``stem`` overrides a state_dict's (and shapes ``random``)."""
    if source == RANDOM:
        if arch in VITS:
            return Backbone(_network(arch, width, "", in_channels), "", in_channels, None, None,
                            f"random init: {arch}")
        if arch not in ARCHS:
            raise _not_wrappable(repr(arch), "random")
        check_choice("stem", stem, STEMS, optional=True)
        stem = stem or "small-s2"
        return Backbone(WideResNet(arch, width, stem, in_channels), stem, in_channels, None, None,
                        f"random init: {arch} width {width} stem {stem}")
    if os.path.isdir(source):
        return _from_run(source)
    if os.path.isfile(source):
        from fastmoco.runs.read import read_weights

        state = read_weights(source, ConfigError)  # read once; a checkpoint is read again with its own checks
        return _from_run(source) if {"config", "model"} <= set(state) else _from_state_dict(state, source, stem)
    raise DataError(f"{source} is neither a fastmoco run, a checkpoint or state_dict file, nor 'random'")
