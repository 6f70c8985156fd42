"""The settings of ``fastmoco-detect``: one dataclass drives the CLI and is saved with each checkpoint."""
import math
from dataclasses import dataclass, fields

from fastmoco.models import ARCHS, DETECTORS, NORMS, STEMS, VITS
from fastmoco.errors import ConfigError, check_choice
from fastmoco.runs.config import check_finite

RESUME_CHOICES = ("auto", "never")
CHOICES = {"model": DETECTORS, "norm": NORMS, "resume": RESUME_CHOICES, "arch": tuple(ARCHS) + tuple(VITS), "stem": STEMS}
# images this small (the embedded scenes: 128 px, at most 4 objects) need far fewer proposals and sampled RoIs than
# torchvision's COCO defaults (2000 / 1000 proposals, 512 RoIs per image): these counts keep recall at 4 objects
# and cut the RoI heads' share of a CPU step
SMALL_IMAGE = 256
SMALL_HEADS = dict(rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500, rpn_pre_nms_top_n_test=500,
                   rpn_post_nms_top_n_test=300, box_batch_size_per_image=64, box_detections_per_img=50)
# settings a resumed run must share with the checkpoint (the rest, e.g. workers or progress, may change)
FIXED_ON_RESUME = ("model", "norm", "epochs", "batch_size", "lr", "lr_decay", "warmup_iters", "train_json", "val_json",
                   "image_size", "fpn_channels", "seed", "arch", "width", "stem", "in_channels", "mean", "std")


@dataclass
class DetectSettings:
    model: str = "maskrcnn"
    norm: str | None = None  # None: syncbn under torchrun on CUDA, bn otherwise (the paper trains BN)
    epochs: int = 12
    batch_size: int = 8  # images per optimizer step, over all processes
    lr: float | None = None  # None: 0.02 x batch / 16 (detectron2's rate at 16 images)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100  # linear warm-up from lr / 1000
    lr_decay: float = 1.0  # layer-wise lr decay over a ViT backbone's blocks (1 = off)
    train_json: str | None = None  # None (all four): the embedded Fashion-MNIST scenes
    train_images: str | None = None
    val_json: str | None = None
    val_images: str | None = None
    image_size: int | None = None  # None: the scenes' canvas, else 800 (COCO's short side)
    fpn_channels: int | None = None  # None: min(256, half the last stage's channels)
    arch: str = "resnet10"  # the architecture of 'random' (a run or a state_dict says its own)
    width: int = 16
    stem: str | None = None  # 'random' (default small-s2) or overriding a state_dict's 3x3 stem: small | small-s2
    in_channels: int = 1
    mean: str | None = None  # "0.5" or "0.485,0.456,0.406"; None: the run's, else the training images'
    std: str | None = None
    out: str | None = None  # None: RUN_DIR/detect, else ./detect-NAME
    resume: str = "auto"
    eval_every: int = 1  # epochs
    checkpoint_every: int = 100  # iterations (and at each epoch's end)
    show: int = 6  # validation images drawn into predictions.png
    workers: int = 2
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def check(self) -> "DetectSettings":
        for f in fields(self):
            check_finite(f.name, getattr(self, f.name))
        for name, allowed in CHOICES.items():
            check_choice(name, getattr(self, name), allowed, optional=True)
        if self.epochs < 1 or self.batch_size < 1 or (self.lr is not None and self.lr <= 0):
            raise ConfigError(f"need epochs >= 1, batch_size >= 1, lr > 0; got {self.epochs}, {self.batch_size}, "
                              f"{self.lr}")
        bounds = dict(eval_every=(self.eval_every, 1), checkpoint_every=(self.checkpoint_every, 1),
                      image_size=(self.image_size, 1), fpn_channels=(self.fpn_channels, 1), width=(self.width, 1),
                      in_channels=(self.in_channels, 1), warmup_iters=(self.warmup_iters, 0), show=(self.show, 0),
                      workers=(self.workers, 0), weight_decay=(self.weight_decay, 0))
        for name, (value, least) in bounds.items():
            if value is not None and value < least:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= {least}, got {value}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"--lr-decay must be in (0, 1] (1 = off), got {self.lr_decay}")
        data = [self.train_json, self.train_images, self.val_json, self.val_images]
        if any(d is not None for d in data) and None in data:
            raise ConfigError("give all four of --train-json, --train-images, --val-json, --val-images (or none: "
                              "the embedded Fashion-MNIST scenes)")
        for name in ("mean", "std"):
            if getattr(self, name) is not None:
                parse_floats(name, getattr(self, name))
        return self

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else 0.02 * self.batch_size / 16


def parse_floats(name: str, text: str) -> tuple:
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        raise ConfigError(f"--{name} takes numbers separated by commas, got {text!r}") from None
    if not all(math.isfinite(v) for v in values) or (name == "std" and min(values) <= 0):
        raise ConfigError(f"--{name} must be finite{' and > 0' if name == 'std' else ''}, got {text!r}")
    return values


def lr_factor(it: int, total: int, warmup: int) -> float:
    """The 1x schedule's shape: linear warm-up from 1/1000, x0.1 at 2/3 and at 8/9 of the iterations (detectron2's
    60k / 80k of 90k)."""
    warm = 1.0 if it >= warmup else 0.001 + (1 - 0.001) * it / warmup
    return warm * 0.1 ** ((it >= round(total * 2 / 3)) + (it >= round(total * 8 / 9)))
