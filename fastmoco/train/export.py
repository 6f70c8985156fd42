"""Export a run's backbone: ``export/backbone.pt`` (state_dict with torchvision key names) and
``export/features.pt2`` (a torch.export program: float images in [0, 1], shaped as the dataset stores them, ->
(N, D) features; it resizes, adapts channels and normalises by itself; the batch size is dynamic)."""
import json
import os

import torch
import torch.nn.functional as F

from fastmoco.models import build_backbone, load_exactly

from . import checkpoint as ckpt_io
from .config import ConfigError, TrainConfig

PREFIX = "encoder_q.backbone."
INPUT_SPEC = "fastmoco_input.json"  # stored inside features.pt2: the channel count and training size


class FeatureExtractor(torch.nn.Module):
    def __init__(self, backbone, raw_shape, image_size, in_channels, mean, std):
        super().__init__()
        self.backbone = backbone.eval()
        self.raw_shape, self.image_size, self.in_channels = tuple(raw_shape), image_size, in_channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) in [0, 1], any H and W -> (N, D)
        x = x * 1.0  # an integer input becomes float here (type promotion at run time), so the check below sees it
        torch._assert_async((x.min() >= 0.0) & (x.max() <= 1.0),
                            "features.pt2 expects float images in [0, 1]; got values outside (uint8 images? divide "
                            "by 255)")
        # always resample: at the training size, bilinear with align_corners=False is the identity
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        if x.shape[1] == 1 and self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        return self.backbone((x - self.mean) / self.std)


def backbone_state_dict(model_state: dict) -> dict:
    return {k[len(PREFIX):]: v for k, v in model_state.items() if k.startswith(PREFIX)}


def read_run(path: str, checkpoint: str | None = None) -> tuple[dict, TrainConfig, dict]:
    """(checkpoint state, its TrainConfig, its data description) of a run directory (its last.pt, or
    ``checkpoint``) or of a checkpoint file: a fastmoco-train run or a fastmoco-convert import."""
    if os.path.isdir(path):
        ckpt = checkpoint or ckpt_io.checkpoint_path(path)
        if not checkpoint and not os.path.isfile(ckpt):
            raise ConfigError(f"{path} is not a fastmoco run directory (no last.pt)")
    elif os.path.isfile(path):
        ckpt = path
    else:
        raise ConfigError(f"{path} does not exist")
    state = ckpt_io.load(ckpt)
    if "config" not in state:
        raise ckpt_io.CheckpointError(f"checkpoint {ckpt} holds no training config; re-run training with this version")
    meta = state.get("data")
    if meta is None:
        raise ckpt_io.CheckpointError(f"checkpoint {ckpt} has no data description; re-run training with this version")
    return state, TrainConfig(**state["config"]), meta  # the checkpoint's own settings, not a later config.yaml


def backbone_from(state: dict, cfg: TrainConfig, meta: dict, path: str):
    """The backbone a checkpoint's state holds, built as its config says."""
    backbone = build_backbone(cfg.arch, cfg.width, cfg.stem, meta["in_channels"])
    load_exactly(backbone, backbone_state_dict(state["model"]), f"the backbone in {path}", ckpt_io.CheckpointError)
    return backbone


def load_backbone(path: str, checkpoint: str | None = None):
    """(backbone with the run's weights, its TrainConfig, its data description)."""
    state, cfg, meta = read_run(path, checkpoint)
    return backbone_from(state, cfg, meta, path), cfg, meta


def describe_checkpoint(state: dict, cfg: TrainConfig, path: str) -> str:
    """Which weights a checkpoint holds, in words: how far its run had come, or where an import came from."""
    if "imported" in state:
        return f"{path}: {state['imported'].get('format', 'imported')} weights from {state['imported'].get('source')}"
    pos = state.get("position", {"epoch": state.get("epoch", 0), "samples": 0})
    where = f"{path}: epoch {pos['epoch']} of {cfg.epochs} finished"
    if pos.get("samples"):
        where += f", {pos['samples']} images into epoch {pos['epoch'] + 1}"
    if pos["epoch"] < cfg.epochs:
        where += " (the run had not finished: it may still be training)"
    return where


def read_weights(path: str, error=ConfigError, prefix: str = "") -> dict:
    """The dict a PyTorch weights file holds, or ``error`` in one line. Loaded safely (``ckpt_io.safe_load``):
    a file that would run code is refused."""
    if not os.path.isfile(path):
        raise error(f"{prefix}checkpoint not found: {path}")
    try:
        obj = ckpt_io.safe_load(path, lambda msg: error(prefix + msg))
    except error:
        raise
    except Exception as exc:  # noqa: BLE001 - pickle, zip and format errors all mean "not a checkpoint"
        raise error(f"{prefix}{path} is not a PyTorch checkpoint ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise error(f"{prefix}{path} holds no state_dict")
    return obj


# what a backbone's shape is made of: --init of a fastmoco run or checkpoint takes these from it unless given
BACKBONE_FIELDS = ("arch", "width", "stem")


def _read_init(path: str) -> tuple[dict, bool]:
    """(what --init PATH holds, whether it is a fastmoco run or checkpoint rather than a plain state_dict)."""
    if os.path.isdir(path):
        return read_run(path)[0], True
    state = read_weights(path, ConfigError, "--init: ")
    return state, "config" in state and "model" in state


def init_settings(path: str) -> dict:
    """The backbone fields (``BACKBONE_FIELDS``) of the run that --init PATH names; {} for a plain state_dict."""
    state, is_run = _read_init(path)
    return {k: state["config"][k] for k in BACKBONE_FIELDS if k in state["config"]} if is_run else {}


def plain_backbone(state: dict) -> dict:
    """The backbone tensors of a plain state_dict (or one under ``state_dict``): a classifier (``fc.*``) is not
    part of the backbone."""
    return {k: v for k, v in state.get("state_dict", state).items() if not k.startswith("fc.")}


def init_backbone(model, path: str) -> None:
    """Both encoders' backbones set to the weights at ``path`` (see ``TrainConfig.init``)."""
    state, is_run = _read_init(path)
    if is_run:
        sd = backbone_state_dict(state["model"])
    else:  # a plain backbone state_dict (torchvision names); a classifier is not part of the backbone
        sd = plain_backbone(state)
    for encoder in (model.encoder_q, model.encoder_k):
        load_exactly(encoder.backbone, sd, f"--init: {path}", ConfigError, "this backbone")


def export_run(run_dir: str, checkpoint: str | None = None) -> dict:
    if not os.path.isdir(run_dir):
        raise ConfigError(f"{run_dir} is not a directory")
    backbone, cfg, meta = load_backbone(run_dir, checkpoint)
    sd = backbone.state_dict()
    out = os.path.join(run_dir, "export")
    os.makedirs(out, exist_ok=True)
    paths = {"backbone": os.path.join(out, "backbone.pt"), "features": os.path.join(out, "features.pt2")}
    ckpt_io.save_atomic(sd, paths["backbone"])

    raw_shape = meta["raw_shape"] or (meta["in_channels"], meta["image_size"], meta["image_size"])
    extractor = FeatureExtractor(backbone, raw_shape, meta["image_size"], meta["in_channels"], meta["mean"],
                                 meta["std"]).eval()
    example = torch.rand(2, *raw_shape)
    with torch.no_grad():
        dims = {0: torch.export.Dim("batch", min=1, max=1 << 20), 2: torch.export.Dim("height", min=2, max=1 << 14),
                3: torch.export.Dim("width", min=2, max=1 << 14)}
        program = torch.export.export(extractor, (example,), dynamic_shapes={"x": dims})
    tmp = os.path.join(out, "features.tmp.pt2")  # torch.export.save wants the .pt2 suffix
    spec = json.dumps(dict(channels=raw_shape[0], image_size=meta["image_size"]))
    torch.export.save(program, tmp, extra_files={INPUT_SPEC: spec})
    os.replace(tmp, paths["features"])
    return paths


def load_extractor(path: str):
    """``features.pt2`` as a function with its input checked in plain words: a (N, C, H, W) float tensor in
    [0, 1] with the channel count the network was trained on; any N, H and W. (The bare program from
    ``torch.export.load(path).module()`` takes the same input, with torch's shape-guard messages.)"""
    extra = {INPUT_SPEC: ""}
    module = torch.export.load(path, extra_files=extra).module()
    spec = json.loads(extra[INPUT_SPEC]) if extra[INPUT_SPEC] else {}

    def extract(x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a tensor of images, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"expected images shaped (N, C, H, W), got {x.dim()} dimensions {tuple(x.shape)}")
        if "channels" in spec and x.shape[1] != spec["channels"]:
            raise ValueError(f"this extractor takes {spec['channels']}-channel images, got {x.shape[1]} channels")
        if not x.is_floating_point():
            raise TypeError(f"expected float images in [0, 1], got {x.dtype} (divide uint8 images by 255)")
        return module(x.float())

    return extract
