"""MoCo v3 checkpoints of the original code (ResNets and ViTs), in full, both ways.

The original layout (``main_moco.py`` of v3; ``module.`` absent in a single-GPU save):
- ``module.base_encoder.<backbone keys>`` with the projector as the ResNet's ``fc`` / the ViT's ``head``: ``0``
  Linear, ``1`` BN, (``2`` ReLU), ``3`` Linear, ``4`` BN without affine parameters for 2 layers (ResNet); ViT: 3
  layers, ``6`` Linear, ``7`` the last BN;
- ``module.momentum_encoder.*``: the same, averaged;
- ``module.predictor.{0,1,3}`` (ResNet: no last BN; ``.4`` when it has one, as for ViTs);
- a ViT's fixed ``pos_embed`` table in both encoders (``vit_layout``);
- top level: ``epoch``, ``arch``, ``state_dict``, ``optimizer``, ``scaler``.
fastmoco's MoCoV3 holds the same modules as ``encoder_q.backbone`` / ``encoder_q.head`` (base encoder),
``encoder_k.*`` (momentum encoder) and ``predictor.*``, with the original's layer indices, so the mapping is a
renaming. The original ``main_lincls.py`` reads ``module.base_encoder.*`` minus its ``fc.*`` / ``head.*``.
"""
import os
import warnings

import torch

from fastmoco.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from fastmoco.errors import ConvertError
from fastmoco.models import VITS, MoCoV3, is_vit, load_exactly
from fastmoco.models.shape import backbone_fields, describe, infer_backbone
from fastmoco.runs import checkpoint as ckpt_io
from fastmoco.runs.checkpoint import imported_payload
from fastmoco.runs.config import PRESETS, TrainConfig
from fastmoco.runs.directory import claim_run_dir
from fastmoco.runs.read import read_run

from .vit_layout import add_pos_embed, drop_pos_embed

PROJECTOR = {False: "fc", True: "head"}  # where the original keeps the projector: a ResNet's fc, a ViT's head
ENCODERS = (("encoder_q.", "base_encoder."), ("encoder_k.", "momentum_encoder."))


def renames(vit: bool) -> tuple[tuple[str, str], ...]:
    """fastmoco's module prefix -> the original's (its projector is the base network's fc / head)."""
    head = PROJECTOR[vit]
    out = []
    for ours, theirs in ENCODERS:
        out += [(ours + "head.", f"{theirs}{head}."), (ours + "backbone.", theirs)]
    return tuple(out) + (("predictor.", "predictor."),)


def strip_module(sd: dict) -> dict:
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def _is_vit(keys: dict) -> bool:
    return "base_encoder.patch_embed.proj.weight" in keys


def has_full_v3(sd: dict) -> bool:
    """Whether a state_dict holds a whole v3 model (base and momentum encoders, predictor), not just a backbone."""
    keys = strip_module(sd)
    projector = f"base_encoder.{PROJECTOR[_is_vit(keys)]}."
    return all(any(k.startswith(p) for k in keys) for p in (projector, "momentum_encoder.", "predictor."))


def mlp_shape(sd: dict, prefix: str, path: str = "") -> tuple[int, int, int, bool]:
    """(Linear layers, hidden width, output width, ends in a BN) of a v3 MLP stored under ``prefix``. The
    original's MLP is Linear, BN, ReLU per hidden layer (the last layer's BN, if any, has no affine weight), so its
    Linear layers sit at 0, 3, 6, ... up to the highest index any key uses, and one more follows a hidden BN: a
    missing one is named, not mistaken for a shorter MLP."""
    indices = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)
               and k[len(prefix):].split(".")[0].isdigit()}
    if not indices:
        raise ConvertError(f"{path}: no Linear layers under {prefix}*")
    hidden_bn = [j for j in indices if j % 3 == 1 and f"{prefix}{j}.weight" in sd]  # affine: a hidden layer's BN
    top = max(max(indices), max(hidden_bn, default=-2) + 2)
    linear = list(range(0, top + 1, 3))
    for i in linear:
        if not (f"{prefix}{i}.weight" in sd and sd[f"{prefix}{i}.weight"].dim() == 2):
            raise ConvertError(f"{path}: missing key {prefix}{i}.weight (a Linear layer of the MoCo v3 MLP, whose "
                               f"keys reach {prefix}{top}.*)")
    last = linear[-1]
    last_bn = f"{prefix}{last + 1}.running_mean" in sd
    return len(linear), sd[f"{prefix}{linear[0]}.weight"].shape[0], sd[f"{prefix}{last}.weight"].shape[0], last_bn


def to_fastmoco(keys: dict, vit: bool) -> dict:
    """The original's v3 state_dict (``module.`` stripped, a ViT's pos_embed dropped) renamed to MoCoV3's."""
    out = {}
    for k, v in keys.items():
        for ours, theirs in renames(vit):
            if k.startswith(theirs):
                out[ours + k[len(theirs):]] = v
                break
        else:
            raise ConvertError(f"unexpected key {k!r} in a MoCo v3 checkpoint (neither base_encoder, "
                               "momentum_encoder nor predictor)")
    return out


def to_original(model_sd: dict, vit_input: tuple[int, int, int] | None = None) -> dict:
    """MoCoV3's state_dict in the original layout, ``module.`` prefixed (as its DDP runs save it); a ViT's
    (image size, patch, width) adds each encoder's pos_embed table."""
    out = {}
    for k, v in model_sd.items():
        for ours, theirs in renames(vit_input is not None):
            if k.startswith(ours):
                out["module." + theirs + k[len(ours):]] = v
                break
    if vit_input is not None:
        table = add_pos_embed({}, *vit_input)["pos_embed"]  # (1, 1 + patches, width), the same in both encoders
        for _, theirs in ENCODERS:
            out[f"module.{theirs}pos_embed"] = table
    return out


def _without_pos_embed(keys: dict, path: str) -> dict:
    """A ViT checkpoint's keys with both encoders' pos_embed checked and dropped."""
    for _, theirs in ENCODERS:
        own = {k[len(theirs):]: v for k, v in keys.items() if k.startswith(theirs)}
        kept = drop_pos_embed(own, f"{path}: {theirs}pos_embed", ConvertError)
        keys = {k: v for k, v in keys.items() if not k.startswith(theirs)} | {theirs + k: v for k, v in kept.items()}
    return keys


def import_v3(sd: dict, path: str, out: str, epoch: int) -> dict:
    """Writes OUT as a fastmoco v3 run that ``--resume`` continues (fresh optimizer state, from ``epoch``) and
    ``--init`` starts from. Returns a summary of what was read."""
    keys = strip_module(sd)
    vit = _is_vit(keys)
    head = f"base_encoder.{PROJECTOR[vit]}."
    backbone_sd = {k[len("base_encoder."):]: v for k, v in keys.items()
                   if k.startswith("base_encoder.") and not k.startswith(head)}
    shape = infer_backbone(backbone_sd)
    if vit:
        keys = _without_pos_embed(keys, path)
    proj_layers, mlp_dim, dim, proj_bn = mlp_shape(keys, head, path)
    pred_layers, _, _, pred_last_bn = mlp_shape(keys, "predictor.", path)
    if not proj_bn:
        raise ConvertError(f"{path}: the projector ({head[:-1]}) ends without its BatchNorm; not a MoCo v3 "
                           "projector")
    size = shape.get("image_size", 224)
    preset = MoCoV3.paper_preset(vit)
    cfg = TrainConfig(data="", preset=preset, dim=dim, mlp_dim=mlp_dim, proj_layers=proj_layers,
                      pred_layers=pred_layers, pred_last_bn=pred_last_bn, image_size=size, out=out,
                      epochs=max(PRESETS[preset]["epochs"], epoch + 1), **backbone_fields(shape)).resolved()
    with torch.device("meta"):  # names and shapes only: nothing is allocated
        model = MoCoV3.from_config(cfg.for_runtime("cpu", 1), shape["in_channels"])  # bn_splits filled in
    state = to_fastmoco(keys, vit)
    with warnings.catch_warnings():  # loading into meta tensors is a no-op torch warns about: the check is the point
        warnings.simplefilter("ignore", UserWarning)
        load_exactly(model, state, f"{path}: the MoCo v3 model", ConvertError,
                     f"v3 with {describe(shape)}, projector {proj_layers}x{mlp_dim}->{dim}")
    meta = dict(in_channels=shape["in_channels"], image_size=size, raw_shape=None, mean=IMAGENET_MEAN,
                std=IMAGENET_STD)
    summary = dict(format="MoCo v3", head=f"projector + predictor + momentum encoder (epoch {epoch})", **shape)
    claim_run_dir(out)
    imported = dict(source=os.path.abspath(path), format="MoCo v3", head=summary["head"], resumable=True,
                    epoch=epoch)
    ckpt_io.save_atomic(imported_payload(state, cfg, meta, imported), ckpt_io.checkpoint_path(out))
    cfg.save(os.path.join(out, "config.yaml"))
    return summary


def export_v3(run_dir: str, out: str) -> str:
    """A fastmoco v3 run (trained or imported) written in the original layout: ``state_dict`` with
    ``module.base_encoder.*`` (projector as ``fc`` / ViT ``head``), ``module.momentum_encoder.*``, ``module.predictor.*``, plus
    ``epoch`` and ``arch``. The original ``main_lincls.py --pretrained`` reads it (``module.base_encoder.*``
    without the projector), as does this package's ``import``; the original ``main_moco.py --resume`` does not:
    it also loads ``optimizer`` and ``scaler`` states, which a fastmoco run (LARS/AdamW of its own) has not in
    that form."""
    state, cfg, meta = read_run(run_dir)
    if cfg.method != MoCoV3.name:
        raise ConvertError(f"{run_dir} trained method {cfg.method!r}; the MoCo v3 layout holds v3 runs")
    pos = state.get("position", {}).get("epoch", state.get("imported", {}).get("epoch", 0))
    vit_input = None
    if is_vit(cfg.arch):
        spec = VITS[cfg.arch]
        vit_input = (meta["image_size"], spec["patch_size"], spec["embed_dim"])
    blob = dict(state_dict=to_original(state["model"], vit_input), epoch=pos, arch=cfg.arch)
    ckpt_io.save_atomic(blob, out)
    return out
