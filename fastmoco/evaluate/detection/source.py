"""Where the detector's backbone comes from: a fastmoco run (trained or imported with fastmoco-convert), a ResNet
state_dict with torchvision names (``export/backbone.pt``, torchvision's own weights, a supervised net), or
``random`` (the architecture's own initialisation)."""
import os
from dataclasses import dataclass

from fastmoco.errors import DataError
from fastmoco.models import ARCHS, STEMS, WideResNet, load_exactly
from fastmoco.errors import ConfigError

RANDOM = "random"


@dataclass
class Backbone:
    resnet: WideResNet
    stem: str
    in_channels: int
    mean: tuple | None  # None: not known (a plain state_dict): the caller takes the training images' statistics
    std: tuple | None
    described: str


def _not_wrappable(arch: str, where: str) -> ConfigError:
    return ConfigError(f"{where}: the detector wraps ResNets ({', '.join(ARCHS)}), not {arch} (a ViT or timm "
                       "backbone has no stages for a feature pyramid)")


def _from_run(path: str) -> Backbone:
    from fastmoco.runs.read import backbone_state_dict, read_run

    state, cfg, meta = read_run(path)
    if cfg.arch not in ARCHS:
        raise _not_wrappable(repr(cfg.arch), path)
    resnet = WideResNet(cfg.arch, cfg.width, cfg.stem, meta["in_channels"])
    load_exactly(resnet, backbone_state_dict(state["model"]), f"the backbone in {path}", ConfigError)
    return Backbone(resnet, cfg.stem, meta["in_channels"], tuple(meta["mean"]), tuple(meta["std"]),
                    f"{path}: {cfg.method} {cfg.arch} width {cfg.width} stem {cfg.stem}")


def _from_state_dict(state: dict, path: str, stem: str | None) -> Backbone:
    from fastmoco.errors import ConvertError
    from fastmoco.models.shape import infer_resnet, is_vit_state_dict
    from fastmoco.runs.read import plain_backbone

    sd = {k.removeprefix("module."): v for k, v in plain_backbone(state).items()}
    if "conv1.weight" not in sd:
        kind = "ViT" if is_vit_state_dict(sd) else "non-ResNet"
        raise _not_wrappable(f"a {kind} state_dict (keys {', '.join(list(sd)[:2])}, ...)", path)
    try:
        shape = infer_resnet(sd)
    except ConvertError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    stem = stem or shape["stem"]  # a 3x3 stem's stride is not in the weights: --stem small-s2 says it
    resnet = WideResNet(shape["arch"], shape["width"], stem, shape["in_channels"])
    load_exactly(resnet, sd, f"the backbone in {path}", ConfigError)
    return Backbone(resnet, stem, shape["in_channels"], None, None,
                    f"{path}: state_dict of a {shape['arch']} width {shape['width']} stem {stem}")


def load_source(source: str, arch: str, width: int, stem: str | None, in_channels: int) -> Backbone:
    """The backbone ``source`` names (see the module's text); ``arch`` / ``width`` / ``in_channels`` shape
    ``random``, ``stem`` overrides a state_dict's (and shapes ``random``)."""
    if source == RANDOM:
        if arch not in ARCHS:
            raise _not_wrappable(repr(arch), "random")
        if stem is not None and stem not in STEMS:
            raise ConfigError(f"unknown stem {stem!r}; choose one of {STEMS}")
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
