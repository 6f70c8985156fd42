"""Reading a run: a run directory or checkpoint file (trained or imported) as its state, its ``TrainConfig`` and
its data description; its backbone; the weights files ``--init`` and the converters read; and the settings a run
named by ``--resume`` / ``--init`` hands to a new configuration."""
import os

from fastmoco.errors import CheckpointError, ConfigError
from fastmoco.models import build_backbone, load_exactly

from . import checkpoint as ckpt_io
from .config import NOT_COMPARED, IMPORT_UNSET, TrainConfig

PREFIX = "encoder_q.backbone."


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
        raise CheckpointError(f"checkpoint {ckpt} holds no training config; re-run training with this version")
    meta = state.get("data")
    if meta is None:
        raise CheckpointError(f"checkpoint {ckpt} has no data description; re-run training with this version")
    return state, TrainConfig(**state["config"]), meta  # the checkpoint's own settings, not a later config.yaml


def backbone_from(state: dict, cfg: TrainConfig, meta: dict, path: str):
    """The backbone a checkpoint's state holds, built as its config says."""
    backbone = build_backbone(cfg.arch, cfg.width, cfg.stem, meta["in_channels"])
    load_exactly(backbone, backbone_state_dict(state["model"]), f"the backbone in {path}", CheckpointError)
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


def _resumed_settings(overrides: dict) -> dict:
    """With --resume, the checkpoint's settings for every field the command line and YAML leave unset."""
    out = overrides.get("out", TrainConfig.out)
    path = ckpt_io.resolve_resume(overrides.get("resume"), out)
    if not path:
        return {}
    state = ckpt_io.load(path, fallback=True)
    saved = state.get("requested_config") or state.get("config", {})  # an imported run has only its config
    return {k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__ and k not in NOT_COMPARED
            and not (k in IMPORT_UNSET and v == "")}


def settings_from_runs(overrides: dict) -> dict:
    """The fields a run named by ``overrides`` hands on, for those left unset: with --resume every setting of the
    checkpoint, with --init of a fastmoco run or checkpoint its backbone's shape (``BACKBONE_FIELDS``)."""
    init = init_settings(overrides["init"]) if overrides.get("init") else {}
    return {**_resumed_settings(overrides), **init}
