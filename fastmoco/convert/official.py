"""Import of the official MoCo checkpoints into a fastmoco run directory (or a backbone file).

Layouts read (``state_dict`` inside the file, or the file itself being a state_dict):
- MoCo v1/v2 (``main_moco.py``): ``module.encoder_q.<resnet keys>``; the head is ``fc`` (v1, a linear layer) or
  ``fc.0``/``fc.2`` (v2, Linear-ReLU-Linear); ``module.encoder_k.*`` and ``module.queue`` (dim x K) beside them.
- MoCo v3 ResNet (``main_moco.py`` of v3): ``module.base_encoder.<resnet keys>`` with the projector as its ``fc``,
  ``module.momentum_encoder.*``, ``module.predictor.*``: imported in full into a v3 run that ``--resume``
  continues (``official_v3.py``); a file with the base encoder alone (as ``main_lincls.py`` reads) gives its
  backbone.
A single-GPU save without the ``module.`` prefix is read too. The architecture (block type and depth), base width,
stem and input channels are read from the tensors' names and shapes.
"""
import os

import torch

from fastmoco.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from fastmoco.models import MoCo, MoCoV3, build_backbone, load_exactly, projection_head
from fastmoco.errors import ConvertError
from fastmoco.models.shape import backbone_fields, describe, infer_backbone
from fastmoco.runs import checkpoint as ckpt_io
from fastmoco.runs.checkpoint import imported_payload
from fastmoco.runs.config import PRESETS, TrainConfig
from fastmoco.runs.directory import claim_run_dir
from fastmoco.runs.read import PREFIX, read_weights

from .official_v3 import PROJECTOR, has_full_v3, import_v3, mlp_shape, strip_module
from .vit_layout import drop_pos_embed

FORMATS = {"encoder_q.": "MoCo v1/v2", "base_encoder.": "MoCo v3"}


def read_state_dict(path: str, obj: dict | None = None) -> dict:
    """The state_dict a checkpoint file holds (under ``state_dict`` / ``model``, or the file itself)."""
    if obj is None:
        obj = read_weights(path, ConvertError)  # a download: tensors and plain containers only
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConvertError(f"{path} holds no state_dict of tensors")
    return obj


def split_official(sd: dict, path: str) -> tuple[str, dict, dict]:
    """(format name, backbone state_dict with torchvision names, head state_dict) of an official checkpoint."""
    for prefix, name in FORMATS.items():
        for outer in ("module.", ""):
            keys = [k for k in sd if k.startswith(outer + prefix)]
            if keys:
                cut = len(outer + prefix)
                own = {k[cut:]: sd[k] for k in keys}
                backbone = {k: v for k, v in own.items() if not k.startswith("fc.")}
                if prefix == "base_encoder.":  # its fc (ResNet) / head (ViT) is v3's projector: not a v1/v2 head
                    return name, {k: v for k, v in backbone.items() if not k.startswith("head.")}, {}
                head = {k[len("fc."):]: v for k, v in own.items() if k.startswith("fc.")}
                return name, backbone, head
    raise ConvertError(f"{path}: unrecognised checkpoint, e.g. key {next(iter(sd))!r} is neither "
                       "module.encoder_q.* (MoCo v1/v2) nor module.base_encoder.* (MoCo v3)")


def head_kind(head: dict) -> tuple[str | None, int | None]:
    """(fastmoco head, output dim) of a v1/v2 head; (None, None) when there is none to import (MoCo v3's
    projector has BatchNorm layers inside, which fastmoco's heads do not)."""
    if set(head) == {"weight", "bias"}:
        return "linear", head["weight"].shape[0]
    if set(head) == {"0.weight", "0.bias", "2.weight", "2.bias"}:
        return "mlp", head["2.weight"].shape[0]
    return None, None


def check_queue(queue, dim: int | None, path: str) -> None:
    """The official queue is (dim, K): its rows must be the head's output width."""
    if queue is None or dim is None:
        return
    if queue.dim() != 2 or queue.shape[0] != dim:
        raise ConvertError(f"{path}: module.queue is {tuple(queue.shape)}, but the head's output is {dim} wide "
                           f"(the queue should be ({dim}, K))")


def _imported_recipe(fmt: str, head: str | None, dim: int | None, queue, sd: dict, size: int, path: str) -> dict:
    """The TrainConfig fields an imported backbone's run records: the method and preset of the paper it came from
    (a v3 base encoder stays v3, so lincls runs v3's protocol on it), with what the file tells of the head."""
    if fmt == "MoCo v3":
        keys = strip_module(sd)
        vit = "base_encoder.patch_embed.proj.weight" in keys
        preset = MoCoV3.paper_preset(vit)
        known = {}
        projector = f"base_encoder.{PROJECTOR[vit]}."
        if any(k.startswith(projector) for k in keys):  # the projector's shape, though only the backbone is kept
            layers, width, out_dim, _ = mlp_shape(keys, projector, path)
            known = dict(proj_layers=layers, mlp_dim=width, dim=out_dim)
        return dict(preset=preset, **{**PRESETS[preset], **known, "image_size": size})
    preset = MoCo.paper_preset(False, head)
    known = dict(head=head or PRESETS[preset]["head"], dim=dim or 128)
    if queue is not None:
        known["K"] = queue.shape[1]  # (dim, K)
    return dict(preset=preset, **{**PRESETS[preset], **known, "image_size": size})


def import_official(path: str, out: str) -> dict:
    """Writes OUT as a fastmoco run directory (``last.pt`` + ``config.yaml``), or, when OUT ends in .pt/.pth,
    only the backbone's state_dict with torchvision names. Returns a summary of what was read."""
    obj = read_weights(path, ConvertError)
    sd = read_state_dict(path, obj)
    if has_full_v3(sd) and not out.endswith((".pt", ".pth")):
        epoch = obj.get("epoch", 0)
        return import_v3(sd, path, out, epoch if isinstance(epoch, int) and epoch >= 0 else 0)
    fmt, backbone_sd, head_sd = split_official(sd, path)
    shape = infer_backbone(backbone_sd)
    backbone = build_backbone(shape["arch"], shape.get("width", 0), shape.get("stem", ""), shape["in_channels"])
    load_exactly(backbone, drop_pos_embed(backbone_sd, f"{path}: pos_embed", ConvertError), f"{path}: the backbone", ConvertError,
                 describe(shape))
    head, dim = head_kind(head_sd)
    if head:
        load_exactly(projection_head(head, backbone.feat_dim, dim), head_sd, f"{path}: the {head} head", ConvertError,
                     f"a {head} head on {backbone.feat_dim} features")
    queue = sd.get("module.queue", sd.get("queue"))
    check_queue(queue, dim, path)
    summary = dict(format=fmt, head=head or "not imported", **shape)
    if out.endswith((".pt", ".pth")):
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        ckpt_io.save_atomic(backbone.state_dict(), out)
        return summary
    claim_run_dir(out)
    model = {PREFIX + k: v for k, v in backbone.state_dict().items()}
    if head:
        model.update({"encoder_q.head." + k: v for k, v in head_sd.items()})
    size = shape.get("image_size", 224)
    recipe = _imported_recipe(fmt, head, dim, queue, sd, size, path)
    cfg = TrainConfig(data="", out=out, **backbone_fields(shape), **recipe)
    meta = dict(in_channels=shape["in_channels"], image_size=size, raw_shape=None, mean=IMAGENET_MEAN,
                std=IMAGENET_STD)
    payload = imported_payload(model, cfg, meta, dict(source=os.path.abspath(path), format=fmt, head=summary["head"]))
    ckpt_io.save_atomic(payload, ckpt_io.checkpoint_path(out))
    cfg.save(os.path.join(out, "config.yaml"))
    return summary
