"""The linear classification protocol: a linear layer trained on the frozen backbone (eval-mode BatchNorm, no
gradient into the backbone), reported as top-1 / top-5 accuracy on held-out images.

- ``official``: the MoCo paper's protocol as its code runs it: SGD, lr 30, momentum 0.9, weight decay 0, batch
  256, 100 epochs, lr x0.1 at epochs 60 and 80 (at 60 % and 80 % of ``--epochs`` when that is changed); training
  images augmented with a random resized crop and a flip, evaluation images resized (short side x 256/224) and
  centre-cropped.
- ``v3`` / ``v3-vit``: MoCo v3's protocols (what ``official`` means for a v3 run on a ResNet / a ViT): SGD,
  momentum 0.9, weight decay 0, batch 1024, 90 epochs, cosine lr from 0.1 x batch/256 (ResNet: 0.4) or
  3 x batch/256 (ViT: 12), the same augmentation; the frozen backbone in eval mode, the class token for ViTs.
- ``fast`` (the default on Fashion-MNIST): the features of every image are extracted once, without augmentation,
  standardised with the training set's mean and standard deviation, and the linear layer is trained on them (SGD,
  momentum 0.9, cosine lr from 0.1, batch 256, 100 epochs): 86 s on 2 CPU cores for Fashion-MNIST (measured).

Under torchrun every process extracts its share of the features (every world-th image) and all of them get all
the features; the ``fast`` classifier is then trained identically everywhere, the ``official`` one on sharded
batches with gradients summed over the processes. Process 0 writes ``OUT/metrics.csv`` and
``OUT/classifier.pt`` (``OUT`` defaults to ``RUN_DIR/lincls``).
"""
import csv
import math
import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fastmoco.data.labelled import labelled_sets
from fastmoco.data.shards.reader import SkipReport
from fastmoco.data.transforms import crop_flip_transform, eval_transform
from fastmoco.evaluate.knn import knn_predict

PROTOCOLS = {
    "official": dict(lr=30.0, momentum=0.9, weight_decay=0.0, batch_size=256, epochs=100, milestones=(0.6, 0.8),
                     resize_ratio=256 / 224),
    "v3": dict(lr=0.1 * 1024 / 256, momentum=0.9, weight_decay=0.0, batch_size=1024, epochs=90, milestones=None,
               resize_ratio=256 / 224),
    "v3-vit": dict(lr=3.0 * 1024 / 256, momentum=0.9, weight_decay=0.0, batch_size=1024, epochs=90, milestones=None,
                   resize_ratio=256 / 224),
    "fast": dict(lr=0.1, momentum=0.9, weight_decay=0.0, batch_size=256, epochs=100, milestones=None,
                 resize_ratio=1.0),
}
PROTOCOL_CHOICES = tuple(PROTOCOLS)  # "official" (its entry: v1/v2's) means the paper's protocol of the run's method


def official_for(cfg) -> str:
    """The original protocol of the method (and backbone family) a run trained."""
    from fastmoco.models import METHODS

    method = METHODS.get(getattr(cfg, "method", None))
    return method.linear_protocol(cfg.arch) if method else "official"


@dataclass
class LinclsSettings:
    protocol: str | None = None  # None: fast on in-memory Fashion-MNIST, official otherwise
    epochs: int | None = None  # None: the protocol's
    lr: float | None = None
    batch_size: int | None = None
    data: str | None = None  # None: the run's training data
    val: str | None = None  # None: the run's --val, or Fashion-MNIST's test set
    subset: int = 0
    checkpoint: str | None = None
    out: str | None = None
    knn: bool = False
    workers: int = 2
    seed: int = 0
    device: str = "auto"
    progress: bool = True


def lr_at(protocol: dict, lr: float, epoch: int, epochs: int) -> float:
    """The learning rate of ``epoch`` (0-based): steps at the milestones (official), else cosine."""
    if protocol["milestones"]:
        return lr * 0.1 ** sum(epoch >= round(m * epochs) for m in protocol["milestones"])
    return lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def _set_lr(opt, proto: dict, s, epoch: int) -> float:
    """The protocol's learning rate for ``epoch``, set on the optimizer."""
    lr = lr_at(proto, s.lr, epoch, s.epochs)
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


def _topk(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (N, 5)
    hit = top == labels[:, None]
    return 100.0 * hit[:, 0].float().mean().item(), 100.0 * hit.any(1).float().mean().item()


def _report_replaced(ds, names: list, pg, log, what: str) -> None:
    """One line naming the samples a sharded set replaced (its items' third field), over every process."""
    report = SkipReport()
    for part in pg.all_objects(names):
        report.add(part)
    line = report.line(getattr(ds, "root", "the data"), f"could not be read {what} and were replaced by the next "
                                                        "readable one")
    if line:
        log(line)


@torch.no_grad()
def extract(backbone, ds, transform, pg, batch: int, workers: int, progress: bool, desc: str, log=print):
    """(features (N, D), labels (N,)) of every image of ``ds``; each process extracts every world-th image."""
    ds.transform = transform
    mine = list(range(pg.rank, len(ds), pg.world))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, mine), batch_size=batch, num_workers=workers)
    feats, labels, replaced = [], [], []
    for x, y, *rest in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        feats.append(backbone(x.to(pg.device)).float().cpu())  # (b, D)
        labels.append(torch.as_tensor(y))
        replaced += [n for n in (rest[0] if rest else []) if n]
    _report_replaced(ds, replaced, pg, log, f"({desc})")
    parts = pg.all_objects((torch.cat(feats), torch.cat(labels)))
    out = torch.empty(len(ds), parts[0][0].shape[1])  # (N, D)
    ys = torch.empty(len(ds), dtype=torch.long)
    for r, (f, y) in enumerate(parts):  # back to the dataset's order
        out[r::pg.world], ys[r::pg.world] = f, y
    return out, ys


class Metrics:
    def __init__(self, out: str | None):
        self.path = os.path.join(out, "metrics.csv") if out else None
        self.rows = []

    def add(self, **row):
        self.rows.append(row)
        if self.path:
            with open(self.path, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(row))
                writer.writeheader()
                writer.writerows(self.rows)


def _fit_fast(fc, train, test, proto, s, pg, metrics):
    (x, y), (xt, yt) = train, test
    mean, std = x.mean(0), x.std(0) + 1e-6  # (D,)
    x, xt = (x - mean) / std, (xt - mean) / std
    fc = fc.to(pg.device)
    x, y, xt, yt = x.to(pg.device), y.to(pg.device), xt.to(pg.device), yt.to(pg.device)
    opt = torch.optim.SGD(fc.parameters(), lr=s.lr, momentum=proto["momentum"], weight_decay=proto["weight_decay"])
    g = torch.Generator().manual_seed(s.seed)
    for epoch in tqdm(range(s.epochs), desc="linear layer", disable=not (s.progress and pg.is_main), leave=False):
        lr = _set_lr(opt, proto, s, epoch)
        total = 0.0
        for idx in torch.randperm(len(x), generator=g).to(pg.device).split(s.batch_size):
            loss = F.cross_entropy(fc(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        with torch.no_grad():
            top1, top5 = _topk(fc(xt), yt)
        metrics.add(epoch=epoch + 1, loss=round(total / len(x), 5), lr=lr, top1=round(top1, 2), top5=round(top5, 2))
    return dict(feature_mean=mean, feature_std=std)


def _fit_official(fc, backbone, train_ds, test_ds, eval_tf, proto, s, pg, metrics, size, mean, std, channels,
                  log=print):
    fc = fc.to(pg.device)
    opt = torch.optim.SGD(fc.parameters(), lr=s.lr, momentum=proto["momentum"], weight_decay=proto["weight_decay"])
    train_tf = crop_flip_transform(size, mean, std, channels)
    for epoch in range(s.epochs):
        lr = _set_lr(opt, proto, s, epoch)
        order = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(s.seed * 1000 + epoch))
        steps = [order[i:i + s.batch_size] for i in range(0, len(order), s.batch_size)]
        steps = [b for b in steps if len(b) >= pg.world]  # every process needs a share of every batch
        train_ds.transform = train_tf
        loader = torch.utils.data.DataLoader(train_ds, batch_sampler=[b[pg.rank::pg.world].tolist() for b in steps],
                                             num_workers=s.workers)
        total, replaced = 0.0, []
        bar = tqdm(zip(steps, loader), total=len(steps), desc=f"epoch {epoch + 1}/{s.epochs}", leave=False,
                   disable=not (s.progress and pg.is_main), dynamic_ncols=True)
        for batch, (x, y, *rest) in bar:
            replaced += [n for n in (rest[0] if rest else []) if n]
            with torch.no_grad():
                feats = backbone(x.to(pg.device))  # (b, D), frozen
            loss = F.cross_entropy(fc(feats), y.to(pg.device), reduction="sum") / len(batch)  # global-batch mean
            opt.zero_grad(set_to_none=True)
            loss.backward()
            pg.sum_grads(fc.parameters())
            opt.step()
            total += loss.item()
        _report_replaced(train_ds, replaced, pg, log, f"in training epoch {epoch + 1}")
        xt, yt = extract(backbone, test_ds, eval_tf, pg, 256, s.workers, False, "evaluate", log)
        with torch.no_grad():
            top1, top5 = _topk(fc(xt.to(pg.device)), yt.to(pg.device))
        loss_mean = pg.mean(total) * pg.world / len(steps)  # each process summed its share of each batch mean
        metrics.add(epoch=epoch + 1, loss=round(loss_mean, 5), lr=lr, top1=round(top1, 2), top5=round(top5, 2))
    return {}


def run_lincls(run_dir: str, s: LinclsSettings, log=print) -> dict:
    """Trains and evaluates the linear classifier of ``run_dir``'s backbone; returns the summary."""
    from fastmoco.data.fmnist import is_fmnist_dir
    from fastmoco.runs import checkpoint as ckpt_io
    from fastmoco.runs import distributed
    from fastmoco.errors import ConfigError, check_choice
    from fastmoco.runs.config import check_finite
    from fastmoco.runs.read import backbone_from, describe_checkpoint, read_run

    pg = distributed.setup(s.device)
    log = log if pg.is_main else (lambda *_: None)
    state, cfg, meta = read_run(run_dir, s.checkpoint)
    backbone = backbone_from(state, cfg, meta, run_dir).to(pg.device).eval().requires_grad_(False)
    shown = s.checkpoint or (ckpt_io.checkpoint_path(run_dir) if os.path.isdir(run_dir) else run_dir)
    log("evaluating " + describe_checkpoint(state, cfg, shown))
    del state
    data = s.data or cfg.data
    if not data:
        raise ConfigError(f"{run_dir} holds imported weights without a dataset: pass --data (and --val)")
    val = s.val if s.val is not None else cfg.val
    name = s.protocol or ("fast" if is_fmnist_dir(data) else "official")
    check_choice("protocol", name, PROTOCOL_CHOICES)
    if name == "official":
        name = official_for(cfg)
    proto = PROTOCOLS[name]
    s = LinclsSettings(**{**asdict(s), "protocol": name, **{k: proto[k] if getattr(s, k) is None else getattr(s, k)
                                                            for k in ("epochs", "lr", "batch_size")}})
    for f in fields(s):
        check_finite(f.name, getattr(s, f.name))
    if s.epochs < 1 or s.lr <= 0 or s.batch_size < 1:
        raise ConfigError(f"need epochs >= 1, lr > 0, batch_size >= 1; got {s.epochs}, {s.lr}, {s.batch_size}")
    train_ds, test_ds, classes, note = labelled_sets(data, val, s.subset)
    if note:
        log(note)
    size, mean, std, channels = meta["image_size"], meta["mean"], meta["std"], meta["in_channels"]
    out = s.out or os.path.join(run_dir if os.path.isdir(run_dir) else os.path.dirname(run_dir), "lincls")
    if pg.is_main:
        os.makedirs(out, exist_ok=True)
    metrics = Metrics(out if pg.is_main else None)
    log(f"linear protocol '{name}' on {data}: {len(train_ds)} training / {len(test_ds)} evaluation images, "
        f"{classes} classes, {s.epochs} epochs, lr {s.lr:g}, batch {s.batch_size}")
    eval_tf = eval_transform(size, mean, std, proto["resize_ratio"], channels)
    fc = torch.nn.Linear(backbone.feat_dim, classes)
    torch.nn.init.normal_(fc.weight, std=0.01)  # as the official code initialises it
    torch.nn.init.zeros_(fc.bias)
    summary = dict(protocol=name, out=out)
    show = s.progress and pg.is_main
    if name == "fast" or s.knn:
        knn_tf = eval_transform(size, mean, std, 1.0, channels)  # the kNN monitor's view of the images
        train = extract(backbone, train_ds, knn_tf, pg, 256, s.workers, show, "features (train)", log)
        test = extract(backbone, test_ds, knn_tf, pg, 256, s.workers, show, "features (eval)", log)
        if s.knn:
            pred = knn_predict(F.normalize(test[0], dim=1), F.normalize(train[0], dim=1), train[1], classes,
                               cfg.knn_k, cfg.knn_t)
            summary["knn_top1"] = 100.0 * (pred == test[1]).float().mean().item()
            log(f"kNN accuracy (k={cfg.knn_k}, t={cfg.knn_t}): {summary['knn_top1']:.2f} %")
    if name == "fast":
        extra = _fit_fast(fc, train, test, proto, s, pg, metrics)
    else:
        extra = _fit_official(fc, backbone, train_ds, test_ds, eval_tf, proto, s, pg, metrics, size, mean, std,
                              channels, log)
    last = metrics.rows[-1]
    summary.update(top1=last["top1"], top5=last["top5"])
    if pg.is_main:
        ckpt_io.save_atomic(dict(fc=fc.state_dict(), settings=asdict(s), run=os.path.abspath(run_dir),
                                 epoch=s.epochs, top1=last["top1"], top5=last["top5"], **extra),
                            os.path.join(out, "classifier.pt"))
    log(f"linear top-1 {last['top1']:.2f} %, top-5 {last['top5']:.2f} % ({name} protocol) -> {out}")
    distributed.teardown()
    return summary


__all__ = ["LinclsSettings", "PROTOCOLS", "PROTOCOL_CHOICES", "lr_at", "official_for", "run_lincls"]
