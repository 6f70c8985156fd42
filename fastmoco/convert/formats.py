"""A run's backbone in other frameworks' layouts: a torchvision ResNet state_dict, a detectron2 weights file and a
timm state_dict.

fastmoco's backbone *is* a torchvision ResNet (same parameter names), so the torchvision export is its state_dict
as is: ``torchvision.models.resnet50().load_state_dict(sd, strict=False)`` then misses only ``fc``. The detectron2
file renames the keys the way the official MoCo conversion does, for detectron2's ``ResNet`` with its weights read
by name heuristics: stem layers under ``stem.`` (``bn1`` becomes the stem conv's ``norm``), ``layer1..4`` become
``res2..res5``, a block's ``bnK`` its ``convK.norm``, ``downsample.0``/``.1`` the ``shortcut`` conv and its
``norm``; values as NumPy arrays in a pickle with ``__author__`` and ``matching_heuristics`` set. The timm file is the
backbone's state_dict for the ``timm.create_model`` call ``timm_export`` returns: a ViT's with its ``pos_embed``
table added (timm stores it; fastmoco computes it), a ``timm:NAME`` run's as is, a standard ResNet's as for
torchvision (timm's ResNets use torchvision's names).
"""
import os
import pickle

from fastmoco.models import VITS, is_timm, is_vit
from fastmoco.runs import checkpoint as ckpt_io
from fastmoco.runs.read import load_backbone

from .official import ConvertError
from .vit_layout import add_pos_embed, timm_kwargs

TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50")  # the depths torchvision and detectron2 both build


def _standard_backbone(run_dir: str, target: str) -> dict:
    """The run's backbone state_dict, refused in one line when no stock torchvision ResNet has its shape."""
    backbone, cfg, meta = load_backbone(run_dir)
    odd = []
    if cfg.arch not in TORCHVISION_ARCHS:
        odd.append(f"arch {cfg.arch}")
    if cfg.width != 64:
        odd.append(f"width {cfg.width} (not 64)")
    if cfg.stem != "imagenet":
        odd.append(f"stem {cfg.stem} (not imagenet)")
    if meta["in_channels"] != 3:
        odd.append(f"{meta['in_channels']} input channel(s) (not 3)")
    if odd:
        raise ConvertError(f"{run_dir}: its backbone has no {target} counterpart: " + ", ".join(odd)
                           + f"; {target} builds {'/'.join(TORCHVISION_ARCHS)} at width 64, 7x7 stem, RGB")
    return backbone.state_dict()


def to_torchvision(run_dir: str, out: str) -> str:
    sd = _standard_backbone(run_dir, "torchvision")
    ckpt_io.save_atomic(sd, out)
    return out


def detectron2_key(key: str) -> str:
    """One torchvision ResNet key renamed for detectron2."""
    if not key.startswith("layer"):
        key = "stem." + key
    for i in range(1, 5):
        key = key.replace(f"layer{i}", f"res{i + 1}")
    for i in range(1, 4):
        key = key.replace(f"bn{i}", f"conv{i}.norm")
    return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def to_detectron2(run_dir: str, out: str) -> str:
    sd = _standard_backbone(run_dir, "detectron2")
    blob = {"model": {detectron2_key(k): v.numpy() for k, v in sd.items()}, "__author__": "fastmoco",
            "matching_heuristics": True}
    tmp = f"{out}.tmp.{os.getpid()}"
    with open(tmp, "wb") as fh:
        pickle.dump(blob, fh)
    os.replace(tmp, out)
    return out


def timm_export(run_dir: str, out: str) -> tuple[str, str]:
    """(OUT, the ``timm.create_model(...)`` call whose ``load_state_dict`` takes it, strict) for a run's backbone."""
    backbone, cfg, meta = load_backbone(run_dir)
    if is_vit(cfg.arch):
        spec = VITS[cfg.arch]
        sd = add_pos_embed(backbone.state_dict(), meta["image_size"], spec["patch_size"], spec["embed_dim"])
        name, kw = timm_kwargs(cfg.arch, meta["in_channels"], meta["image_size"])
    elif is_timm(cfg.arch):
        sd, name, kw = backbone.state_dict(), cfg.arch.split(":", 1)[1], dict(num_classes=0,
                                                                            in_chans=meta["in_channels"])
    else:
        sd, name, kw = _standard_backbone(run_dir, "timm"), cfg.arch, dict(num_classes=0)
    ckpt_io.save_atomic(sd, out)
    args = ", ".join([repr(name)] + [f"{k}={v!r}" for k, v in kw.items()])
    return out, f"timm.create_model({args})"
