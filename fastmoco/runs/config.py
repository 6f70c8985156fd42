"""``TrainConfig``: the one dataclass behind ``fastmoco-train``'s flags and ``--config FILE.yaml``.

Precedence: dataclass defaults < preset (for the fields left unset) < the run --resume / --init names < YAML file
< command-line flags (the command line itself is built in ``fastmoco.cli.train``). The resolved config (every
field filled) is written to ``OUT/config.yaml``.
"""
import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from typing import Optional

import yaml

from fastmoco import ops
from fastmoco.data import LOADERS
from fastmoco.data.transforms import AUGS
from fastmoco.errors import ConfigError, check_choice
from fastmoco.models import ARCHS, METHODS, STEMS, VITS, known_arch, preset_table
from fastmoco.models.backbones import STEM_NOTES
from fastmoco.models.moco import QUEUE_K

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist: the embedded default
OPTIMIZERS = ("sgd", "lars", "adamw")  # each built in fastmoco.train.optim
SCHEDULES = ("cosine", "step")  # lr schedules, each built in fastmoco.train.schedules
M_SCHEDULES = ("const", "cosine")  # key-momentum schedules (fastmoco.train.schedules)
AMP_DTYPES = ("bf16", "fp16")  # autocast dtypes (fastmoco.train.step maps each to its torch dtype)
COMPILE_MODES = ("default", "max-autotune", "reduce-overhead")
GUARDS = ("on", "off")
GUARD_K = 6.0  # a healthy default run strayed at most 4.05 MADs from its band (benchmarks/RESULTS.md 14.2)
# Defaults that depend on the device, for the fields left unset (None). CPU: fp32 (bf16 autocast measured ~4.5x
# slower on the AVX2 dev CPU), NCHW, eager (the compiled step measured slower there once its compile time is
# counted: benchmarks/RESULTS.md section 3). CUDA: bf16 autocast, channels-last and the compiled step.
DEVICE_DEFAULTS = {
    "cpu": dict(amp=False, channels_last=False, compile=False),
    "cuda": dict(amp=True, channels_last=True, compile=True),
}
# What a preset decides, for the fields the user left unset (None): each method's recipes, defined (with the
# measurements that chose them) in its own module under fastmoco/models
PRESETS = preset_table()
# The allowed values of every field with a fixed set, each from the module that owns it: what validate() checks
# and what fastmoco-train offers as choices=
CHOICES = dict(
    method=tuple(METHODS), preset=tuple(PRESETS), stem=STEMS,
    head=tuple(dict.fromkeys(h for m in METHODS.values() for h in m.heads)),
    aug=AUGS, schedule=SCHEDULES, m_schedule=M_SCHEDULES, ops=ops.IMPLEMENTATIONS, optimizer=OPTIMIZERS,
    amp_dtype=AMP_DTYPES, compile_mode=COMPILE_MODES, guard=GUARDS, loader=LOADERS,
)


def _listing(notes: dict) -> str:
    """'a (note a) | b (note b)': a registry's names with their notes, for --help."""
    return " | ".join(f"{name} ({note})" if note else name for name, note in notes.items())


def _by_preset(name: str, of: str | None = None) -> str:
    """'(preset: 9 v1, v2, fmnist; 100 v3)': a field's value in each preset (of the method ``of``), for --help."""
    groups: dict = {}
    for preset, values in PRESETS.items():
        if of in (None, values["method"]):
            groups.setdefault(values[name], []).append(preset)
    shown = lambda v: ("on" if v else "off") if isinstance(v, bool) else f"{v:g}"  # noqa: E731
    return "(preset: " + "; ".join(f"{shown(v)} {', '.join(ps)}" for v, ps in groups.items()) + ")"


@dataclass
class TrainConfig:
    # data
    data: str = field(default=FMNIST_DIR, metadata=dict(
        help="Fashion-MNIST IDX folder, an ImageFolder root, or WebDataset shards (manifest.json, its folder, or a "
             "brace pattern of .tar files)"))
    val: Optional[str] = field(default=None, metadata=dict(help="labelled ImageFolder or shards for the kNN monitor"))
    subset: int = field(default=0, metadata=dict(help="train on the first N images only (0 = all)"))
    classes: str = field(default="", metadata=dict(
        help="train on these classes only: comma-separated class names or indices (Fashion-MNIST's, or an "
             "ImageFolder's folders in sorted order); the kNN monitor scores the same classes; empty = all"))
    image_size: Optional[int] = field(default=None, metadata=dict(
        help="training resolution (preset; 0 = the dataset's own size, 32 for folders)"))
    aug: Optional[str] = field(default=None, metadata=dict(
        help="augmentation recipe; v3 is v2 with v3's asymmetric views (blur p=1.0 / 0.1, solarize p=0.2 on view "
             "2) (preset)"))
    crop_min_scale: Optional[float] = field(default=None, metadata=dict(help="RandomResizedCrop lower area bound (preset)"))
    jitter: Optional[float] = field(default=None, metadata=dict(help="colour-jitter strength (preset)"))
    erase_p: Optional[float] = field(default=None, metadata=dict(help="random-erasing probability, batched aug (preset)"))
    small_crops: int = field(default=0, metadata=dict(
        help="multi-crop: extra low-resolution query views per image, each contrasted with the key (0 = off)"))
    small_crop_size: int = field(default=0, metadata=dict(help="side of the small crops (0 = half the training size)"))
    small_crop_scale: str = field(default="0.05,0.14", metadata=dict(
        help="area range of the small crops, as fractions of the image: 'min,max'"))
    workers: int = field(default=2, metadata=dict(help="loader threads: DataLoader workers or DALI CPU threads"))
    # a window is a permutation of sample positions, not of images: it costs no memory, and with 10,000 its reads
    # stay within ~10 consecutive shards of 1,000 samples while mixing each batch from all of them
    shard_shuffle: int = field(default=10_000, metadata=dict(
        help="shards: each process shuffles its stream in windows of this many samples (1 = shard order)"))
    loader: Optional[str] = field(default=None, metadata=dict(
        help="who decodes and augments (default: dali for ImageFolders when installed, "
             "torch's batched augmentation for Fashion-MNIST, the faster there)"))
    # model
    preset: Optional[str] = field(default=None, metadata=dict(
        help="the recipe: " + _listing({n: note for m in METHODS.values() for n, note in m.preset_notes.items()})
             + "; default: the method's own for the arch (" + ", ".join(
                 f"{name}: {m.default_preset('resnet10')}" for name, m in METHODS.items()) + " on ResNets)"))
    method: Optional[str] = field(default=None, metadata=dict(
        help=_listing({name: m.about for name, m in METHODS.items()}) + " (preset)"))
    arch: str = field(default="resnet10", metadata=dict(
        help=" | ".join([*ARCHS, *VITS]) + " | timm:NAME (any timm model, its own pooled features); vit_fmnist has "
             f"{VITS['vit_fmnist']['patch_size']} px patches, for 28-36 px images"))
    freeze_patch_embed: bool = field(default=True, metadata=dict(
        help="ViTs: keep the randomly initialised patch projection frozen (MoCo v3's stability trick)"))
    width: int = field(default=16, metadata=dict(help="base width (64 = torchvision's nets)"))
    stem: str = field(default="small-s2", metadata=dict(help="the ResNet stem: " + _listing(STEM_NOTES)))
    bn_splits: Optional[int] = field(default=None, metadata=dict(
        help="Split-BN sub-batches per process (1 = plain BN; default 8 in one process, 1 under torchrun)"))
    sync_bn: Optional[bool] = field(default=None, metadata=dict(
        help="SyncBatchNorm across processes (CUDA). v1/v2: instead of shuffle-BN (note it lets BN statistics span "
             "the positive pair), off by default; v3: the whole model, on by default under torchrun on CUDA"))
    head: Optional[str] = field(default=None, metadata=dict(
        help="projection head: " + "; ".join(f"{', '.join(m.heads)} for {name}" for name, m in METHODS.items())
             + " (preset)"))
    dim: Optional[int] = field(default=None, metadata=dict(help="embedding size " + _by_preset("dim")))
    mlp_dim: Optional[int] = field(default=None, metadata=dict(
        help="v3: hidden width of the projector and the predictor (preset)"))
    proj_layers: Optional[int] = field(default=None, metadata=dict(
        help="v3: Linear layers of the projector " + _by_preset("proj_layers", "v3")))
    pred_layers: int = field(default=2, metadata=dict(help="v3: Linear layers of the predictor"))
    pred_last_bn: Optional[bool] = field(default=None, metadata=dict(
        help="v3: the predictor ends in a BatchNorm, as the original's for ViTs " + _by_preset("pred_last_bn", "v3")))
    K: int = field(default=QUEUE_K, metadata=dict(help="queue size (negative keys; v1/v2: v3 takes the batch's)"))
    m: Optional[float] = field(default=None, metadata=dict(help="key-encoder momentum (preset)"))
    m_schedule: Optional[str] = field(default=None, metadata=dict(
        help="key-momentum schedule; cosine: m rises to 1 over training, updated every step (preset)"))
    ema_bn_buffers: bool = field(default=False, metadata=dict(help="also average BN running statistics"))
    T: Optional[float] = field(default=None, metadata=dict(help="InfoNCE temperature (preset)"))
    symmetric: bool = field(default=False, metadata=dict(
        help="symmetrised loss (both views as queries; v1/v2: v3's loss always is)"))
    ops: str = field(default="fused", metadata=dict(help="the fused ops, or the references (the naive original-code path)"))
    # optimisation
    epochs: Optional[int] = field(default=None, metadata=dict(
        help="training epochs " + _by_preset("epochs")))
    batch_size: int = field(default=128, metadata=dict(help="images per micro-batch, per process"))
    accum_steps: int = field(default=1, metadata=dict(
        help="micro-batches per optimizer step (the EMA and the enqueue run once per optimizer step)"))
    lr: Optional[float] = field(default=None, metadata=dict(
        help="learning rate (for the global batch, see lr_ref_batch) " + _by_preset("lr")))
    lr_ref_batch: Optional[int] = field(default=None, metadata=dict(
        help="linear scaling: lr is meant for this global batch and is scaled by global/lr_ref_batch (0 = off) "
             + _by_preset("lr_ref_batch")))
    optimizer: Optional[str] = field(default=None, metadata=dict(
        help="lars: for large batches (per-tensor trust ratio 0.001, biases and BN parameters excluded from it and "
             "from weight decay, as MoCo v3 trains ResNets); adamw: MoCo v3's ViTs (decay on every parameter) "
             "(preset)"))
    sgd_momentum: float = field(default=0.9, metadata=dict(help="momentum (SGD or LARS)"))
    weight_decay: Optional[float] = field(default=None, metadata=dict(
        help="weight decay (LARS: weights only) " + _by_preset("weight_decay")))
    warmup_epochs: Optional[float] = field(default=None, metadata=dict(
        help="linear LR warm-up, in epochs, per step " + _by_preset("warmup_epochs")))
    schedule: Optional[str] = field(default=None, metadata=dict(help="lr schedule (preset)"))
    lr_steps: str = field(default="0.6,0.8", metadata=dict(help="step schedule: fractions of training at which lr *= 0.1"))
    amp: Optional[bool] = field(default=None, metadata=dict(help="autocast (default: on for CUDA, off for CPU)"))
    amp_dtype: str = field(default="bf16", metadata=dict(help="autocast dtype (fp16 adds a GradScaler)"))
    channels_last: Optional[bool] = field(default=None, metadata=dict(
        help="channels-last memory format (default: on for CUDA, off for CPU)"))
    compile: Optional[bool] = field(default=None, metadata=dict(
        help="torch.compile the step (default: on for CUDA, off for CPU, where it measured slower)"))
    compile_mode: str = field(default="default", metadata=dict(help="torch.compile's mode"))
    # monitoring and output
    knn_every: int = field(default=0, metadata=dict(help="kNN accuracy every N epochs (0 = only at the end)"))
    knn_k: int = field(default=200, metadata=dict(help="kNN neighbours"))
    knn_t: float = field(default=0.1, metadata=dict(help="kNN temperature"))
    out: str = field(default="runs/fastmoco", metadata=dict(help="run directory"))
    resume: Optional[str] = field(default=None, metadata=dict(help="auto (OUT/last.pt if present) or a checkpoint path"))
    init: Optional[str] = field(default=None, metadata=dict(
        help="start from these backbone weights: a run directory (trained or imported), a checkpoint, or a "
             "state_dict file with torchvision names; unlike --resume, optimizer and schedules start afresh"))
    overwrite: bool = field(default=False, metadata=dict(help="start afresh in an --out that already holds a run"))
    seed: int = field(default=0, metadata=dict(help="random seed"))
    device: str = field(default="auto", metadata=dict(help="auto | cpu | cuda | cuda:N"))
    threads: int = field(default=0, metadata=dict(help="torch CPU threads (0 = torch's default)"))
    progress: bool = field(default=True, metadata=dict(help="tqdm progress bar"))
    max_steps: int = field(default=0, metadata=dict(help="stop after this many steps in total (0 = no limit)"))
    save_every_min: float = field(default=0.0, metadata=dict(
        help="also checkpoint inside an epoch every M minutes (0 = at epoch ends only)"))
    # the guard (fastmoco.train.guard): skip non-finite steps on the device, roll a loss spike back
    guard: str = field(default="on", metadata=dict(
        help="on: a step with a non-finite loss or gradients is skipped on every process, and a loss spike rolls "
             "the run back to its last good state with a cooled-down lr | off: stop at the first non-finite loss"))
    guard_k: float = field(default=GUARD_K, metadata=dict(
        help="guard: a checked loss above median + k x MAD of the recent ones is a spike"))
    guard_window: int = field(default=50, metadata=dict(help="guard: checked losses the band is computed over"))
    guard_snapshot_every: int = field(default=50, metadata=dict(
        help="guard: steps between the in-memory snapshots a rollback returns to (taken while the loss is calm)"))
    guard_cooldown_steps: int = field(default=100, metadata=dict(help="guard: steps at the lowered lr after a rollback"))
    guard_cooldown_lr: float = field(default=0.1, metadata=dict(help="guard: lr factor during the cool-down"))
    guard_max_recoveries: int = field(default=3, metadata=dict(
        help="guard: rollbacks allowed in a run; one more stops it, naming the step and the cause"))

    # -- resolution and checks -------------------------------------------------------------------------------
    def resolved(self) -> "TrainConfig":
        """The preset's values filled in and every value checked (device-dependent fields may stay None)."""
        _check_types(self)
        check_choice("method", self.method, METHODS, optional=True)
        method = METHODS[self.method or "queue"]
        preset = self.preset or method.default_preset(self.arch)
        check_choice("preset", preset, sorted(PRESETS))
        if self.method is not None and PRESETS[preset]["method"] != self.method:
            raise ConfigError(f"preset {preset} is a recipe of method {PRESETS[preset]['method']}, not "
                              f"{self.method}; pick a {self.method} preset ({', '.join(method.presets)})")
        filled = {k: v for k, v in PRESETS[preset].items() if getattr(self, k) is None}
        cfg = dataclasses.replace(self, preset=preset, **filled)
        cfg.validate()
        return cfg

    def for_runtime(self, device_type: str, world_size: int) -> "TrainConfig":
        """The fields left to the device and the process count, filled in (what the run saves and uses)."""
        filled = {k: v for k, v in DEVICE_DEFAULTS[device_type].items() if getattr(self, k) is None}
        method = METHODS[self.method]
        if self.sync_bn is None:  # the method's BN policy for this device and process count
            filled["sync_bn"] = method.runtime_defaults(self, world_size, device_type)["sync_bn"]
        cfg = dataclasses.replace(self, **filled)
        if cfg.bn_splits is None:  # Split-BN, where the method guards BN with it, given the sync_bn just decided
            cfg = dataclasses.replace(cfg, bn_splits=method.runtime_defaults(cfg, world_size, device_type)["bn_splits"])
        cfg.validate()
        method.check_runtime(cfg, world_size, device_type)
        if cfg.sync_bn and cfg.bn_splits != 1:
            raise ConfigError(f"sync_bn replaces Split-BN: pass --bn-splits 1 (got {cfg.bn_splits})")
        return cfg

    def global_batch(self, world_size: int) -> int:
        """Images per optimizer step over all processes."""
        return self.batch_size * self.accum_steps * world_size

    def lr_for(self, world_size: int) -> float:
        """The learning rate used: ``lr``, or linearly scaled to the global batch when lr_ref_batch is set."""
        if not self.lr_ref_batch:
            return self.lr
        return self.lr * self.global_batch(world_size) / self.lr_ref_batch

    def validate(self) -> None:
        def need(ok: bool, msg: str):
            if not ok:
                raise ConfigError(msg)

        for name, allowed in CHOICES.items():  # loader None: chosen by the data
            check_choice(name, getattr(self, name), allowed, optional=name == "loader")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.shard_shuffle >= 1, f"shard_shuffle must be >= 1, got {self.shard_shuffle}")
        need(self.K >= 1, f"K (queue size) must be >= 1, got {self.K}")
        need(known_arch(self.arch), f"unknown arch {self.arch!r}; choose one of {sorted(ARCHS) + sorted(VITS)} or "
             "timm:NAME")
        need(self.width >= 1, f"width must be >= 1, got {self.width}")
        METHODS[self.method].check_config(self)
        need(0.0 <= self.m <= 1.0, f"m must be in [0, 1], got {self.m}")
        need(self.T > 0, f"T must be > 0, got {self.T}")
        need(self.dim >= 1, f"dim must be >= 1, got {self.dim}")
        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(self.batch_size >= 2, f"batch_size must be >= 2, got {self.batch_size}")
        if self.bn_splits is not None:
            need(self.bn_splits >= 1, f"bn_splits must be >= 1, got {self.bn_splits}")
            need(self.batch_size % self.bn_splits == 0,
                 f"batch_size {self.batch_size} must be divisible by bn_splits {self.bn_splits}")
        need(self.accum_steps >= 1, f"accum_steps must be >= 1, got {self.accum_steps}")
        need(self.lr_ref_batch >= 0, f"lr_ref_batch must be >= 0, got {self.lr_ref_batch}")
        need(self.save_every_min >= 0, f"save_every_min must be >= 0, got {self.save_every_min}")
        need(self.guard_k > 0, f"guard_k must be > 0, got {self.guard_k}")
        need(self.guard_window >= 5, f"guard_window must be >= 5 checked losses, got {self.guard_window}")
        need(self.guard_snapshot_every >= 1, f"guard_snapshot_every must be >= 1, got {self.guard_snapshot_every}")
        need(self.guard_cooldown_steps >= 0, f"guard_cooldown_steps must be >= 0, got {self.guard_cooldown_steps}")
        need(0 < self.guard_cooldown_lr <= 1, f"guard_cooldown_lr must be in (0, 1], got {self.guard_cooldown_lr}")
        need(self.guard_max_recoveries >= 0, f"guard_max_recoveries must be >= 0, got {self.guard_max_recoveries}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(0 <= self.sgd_momentum < 1, f"sgd_momentum must be in [0, 1), got {self.sgd_momentum}")
        need(self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        need(self.warmup_epochs < self.epochs or self.warmup_epochs == 0,
             f"warmup_epochs {self.warmup_epochs:g} must be less than epochs {self.epochs} (the preset {self.preset} "
             "warms up for that long): pass a larger --epochs or a smaller --warmup-epochs")
        need(0 < self.crop_min_scale <= 1, f"crop_min_scale must be in (0, 1], got {self.crop_min_scale}")
        need(0 <= self.jitter < 1, f"jitter must be in [0, 1), got {self.jitter}")
        need(0 <= self.erase_p <= 1, f"erase_p must be in [0, 1], got {self.erase_p}")
        need(self.small_crops >= 0, f"small_crops must be >= 0, got {self.small_crops}")
        need(self.small_crop_size >= 0, f"small_crop_size must be >= 0, got {self.small_crop_size}")
        try:
            lo, hi = self.small_crop_range()
        except ValueError:
            raise ConfigError(f"small_crop_scale must be two fractions 'min,max', "
                              f"got {self.small_crop_scale!r}") from None
        need(0 < lo <= hi <= 1, f"small_crop_scale must satisfy 0 < min <= max <= 1, got {self.small_crop_scale!r}")
        need(self.subset >= 0, f"subset must be >= 0, got {self.subset}")
        need(self.knn_every >= 0, f"knn_every must be >= 0, got {self.knn_every}")
        need(self.knn_k >= 1 and self.knn_t > 0, f"need knn_k >= 1 and knn_t > 0, got {self.knn_k}, {self.knn_t}")
        need(self.image_size >= 0, f"image_size must be >= 0, got {self.image_size}")
        cores = os.cpu_count() or 1
        need(0 <= self.threads <= cores,
             f"threads must be between 0 (torch's default) and this machine's {cores} cores, got {self.threads}")
        need(self.workers >= 0, f"workers must be >= 0, got {self.workers}")
        try:
            steps = self.milestones()
        except ValueError:
            raise ConfigError(f"lr_steps must be comma-separated fractions, got {self.lr_steps!r}") from None
        need(all(0 < s < 1 for s in steps), f"lr_steps must lie in (0, 1), got {self.lr_steps!r}")

    def milestones(self) -> list[float]:
        """The step schedule's milestones (fractions of training) from ``lr_steps``."""
        return [float(s) for s in self.lr_steps.split(",") if s.strip()]

    def small_crop_range(self) -> tuple[float, float]:
        """(min, max) area fractions of the small crops, from ``small_crop_scale``; ValueError if malformed."""
        lo, hi = (float(s) for s in self.small_crop_scale.split(","))
        return lo, hi

    def small_size(self, image_size: int) -> int:
        """The small crops' side for a run training at ``image_size`` (0 without small crops)."""
        if not self.small_crops:
            return 0
        return self.small_crop_size or max(1, round(image_size / 2))

    # -- files -----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str) -> None:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as fh:
            yaml.safe_dump(self.to_dict(), fh, sort_keys=False)
        os.replace(tmp, path)

    @classmethod
    def from_yaml(cls, path: str) -> dict:
        """The overrides a YAML file holds, checked against the dataclass's fields."""
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        try:
            with open(path) as fh:
                data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of field: value")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config keys in {path}: {', '.join(unknown)}")
        return data


# Settings a resumed run cannot change: they fix the model's shapes, the data and its order. Every other setting
# may change on resume (lr, epochs, schedules, monitor, speed options, process count); the change takes effect
# everywhere, the schedules included (they run on epoch progress), and is logged. A run imported from another
# code's checkpoint (MoCo v3's) fixes the model's shapes only: it was not trained on this data or in this order.
MODEL_SHAPE = ("method", "arch", "width", "stem", "head", "dim", "K", "mlp_dim", "proj_layers", "pred_layers",
               "pred_last_bn")
FIXED_ON_RESUME = ("data", "classes", "subset", "image_size", "seed", *MODEL_SHAPE, "freeze_patch_embed", "batch_size", "symmetric",
                   "optimizer", "shard_shuffle")
NOT_COMPARED = ("resume", "overwrite")
IMPORT_UNSET = ("data",)  # an imported run names no data: "" there, never taken as a --data path


def resume_changes(saved: dict, cfg: "TrainConfig", imported: bool = False) -> list[str]:
    """'name old -> new' for each setting that differs from the checkpoint's; a fixed one is a ConfigError."""
    changes = []
    fixed = MODEL_SHAPE if imported else FIXED_ON_RESUME
    for name, new in cfg.to_dict().items():
        if name in NOT_COMPARED or name not in saved or saved[name] == new:
            continue
        if name in fixed:
            raise ConfigError(f"--resume: {name} cannot change on resume (checkpoint: {saved[name]!r}, now: {new!r}); "
                              "start a new run with another --out")
        changes.append(f"{name} {saved[name]!r} -> {new!r}")
    return changes


def base_type(f):
    """The Python type a field holds (``Optional[X]`` and ``X | None`` unwrapped)."""
    name = str(f.type).replace("typing.", "").replace("<class '", "").replace("'>", "")
    name = name[len("Optional["):-1] if name.startswith("Optional[") else name
    name = name[:-len(" | None")] if name.endswith(" | None") else name
    return {"str": str, "float": float, "int": int, "bool": bool}[name]


def _check_types(cfg) -> None:
    """YAML and Python callers can pass anything: a string where a bool belongs must not turn an option on."""
    for f in fields(cfg):
        value, want = getattr(cfg, f.name), base_type(f)
        if value is None and "Optional" in str(f.type):
            continue
        ok = (isinstance(value, bool) if want is bool else
              isinstance(value, (int, float)) and not isinstance(value, bool) if want is float else
              isinstance(value, int) and not isinstance(value, bool) if want is int else isinstance(value, str))
        if not ok:
            raise ConfigError(f"{f.name} must be {want.__name__}, got {value!r} ({type(value).__name__})")
        check_finite(f.name, value)


def check_finite(name: str, value) -> None:
    """NaN and infinity pass every ``x > 0`` style check the wrong way (nan <= 0 is False): refuse them first."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")
