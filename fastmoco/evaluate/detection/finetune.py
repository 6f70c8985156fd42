"""Fine-tuning a detector from a backbone, every layer trained, and its COCO evaluation.

Each optimizer step takes ``batch_size`` images of the epoch's order (drawn from (seed, epoch)); under torchrun
each process takes every world-th of them and the gradients are averaged. The detector's own random draws (the
RPN's and RoI heads' sampling) and each image's flip are seeded from the step and the image, so a run resumed from
any checkpoint takes the same steps as the uninterrupted one. Process 0 writes ``OUT/last.pt`` (atomically, every
``checkpoint_every`` steps and at each epoch's end), ``OUT/metrics.csv`` (one row per evaluation) and
``OUT/predictions.png``.
"""
import os
from dataclasses import asdict, fields

import torch
from tqdm import tqdm

from fastmoco.errors import ConfigError, DataError
from fastmoco.models import DETECTORS, build_detector
from fastmoco.models.detection import lr_groups
from fastmoco.runs import checkpoint as ckpt_io

from .coco import CocoSet, hflip
from .cocoeval import coco_ap, to_coco_results
from .settings import FIXED_ON_RESUME, SMALL_HEADS, SMALL_IMAGE, DetectSettings, lr_factor, parse_floats
from .source import RANDOM, load_source

CHECKPOINT = "last.pt"
STATS_IMAGES = 500  # training images whose pixel statistics normalise a backbone that brings none


def data_paths(s: DetectSettings, progress: bool) -> tuple:
    """(train json, train images, val json, val images): the given ones, or the embedded scenes (drawn on first
    use into the cache)."""
    if s.train_json is not None:
        return s.train_json, s.train_images, s.val_json, s.val_images
    from fastmoco.data.fmnist import is_fmnist_dir
    from fastmoco.data.scenes import default_scenes_dir, write_scenes
    from fastmoco.runs.config import FMNIST_DIR as fmnist

    if not is_fmnist_dir(fmnist):
        raise DataError(f"the embedded scene set is drawn from Fashion-MNIST, not found at {fmnist} "
                        "(apt-get install dataset-fashion-mnist), or pass --train-json/--train-images/--val-json/"
                        "--val-images")
    root = write_scenes(default_scenes_dir(), fmnist, progress=progress)
    return (os.path.join(root, "train.json"), os.path.join(root, "train"), os.path.join(root, "val.json"),
            os.path.join(root, "val"))


def _pixel_stats(ds: CocoSet) -> tuple[tuple, tuple]:
    imgs = [ds.image(i) for i in ds.ids[:STATS_IMAGES]]  # each (C, H, W)
    flat = torch.cat([im.flatten(1) for im in imgs], 1)  # (C, pixels)
    return tuple(flat.mean(1).tolist()), tuple(flat.std(1).tolist())


def _normalisation(s: DetectSettings, backbone, train_ds: CocoSet) -> tuple[tuple, tuple]:
    """The input mean and std: --mean/--std, else the run's, else the training images' statistics."""
    mean, std = backbone.mean, backbone.std  # both None for a plain state_dict or random init
    if mean is None and (s.mean is None or s.std is None):
        mean, std = _pixel_stats(train_ds)
    mean = parse_floats("mean", s.mean) if s.mean is not None else mean
    std = parse_floats("std", s.std) if s.std is not None else std
    if len(mean) != backbone.in_channels or len(std) != backbone.in_channels:
        raise ConfigError(f"the backbone takes {backbone.in_channels} channel(s): give --mean/--std with "
                          f"{backbone.in_channels} value(s), got {len(mean)} and {len(std)}")
    return mean, std


class _EpochImages(torch.utils.data.Dataset):
    """The training set with each image's flip seeded from (seed, epoch, image)."""

    def __init__(self, ds: CocoSet, seed: int, epoch: int):
        self.ds, self.seed, self.epoch = ds, seed, epoch

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i: int):
        image, target = self.ds[i]
        g = torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) * 1_000_003 + i)
        return hflip(image, target) if torch.rand((), generator=g) < 0.5 else (image, target)


def _collate(batch):
    return tuple(zip(*batch))


def _steps_of_epoch(s, n: int, epoch: int, first: int, pg) -> list[list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(s.seed * 100_003 + epoch)).tolist()
    steps = [order[j * s.batch_size:(j + 1) * s.batch_size] for j in range(n // s.batch_size)]
    return [b[pg.rank::pg.world] for b in steps[first:]]


def _average_grads(params, pg) -> None:
    if not pg.distributed:
        return
    import torch.distributed as dist

    for p in params:  # a head with no positive sample in this process's images has no gradient: it counts as zero
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= pg.world


@torch.no_grad()
def evaluate(model, ds: CocoSet, pg, batch: int, progress: bool) -> dict:
    """COCO AP of ``model`` on ``ds``; each process predicts every world-th image, process 0 scores them all."""
    model.eval()
    mine = ds.ids[pg.rank::pg.world]
    results = []
    for i in tqdm(range(0, len(mine), batch), desc="evaluate", disable=not progress, leave=False, dynamic_ncols=True):
        ids = mine[i:i + batch]
        outputs = model([ds.image(j).to(pg.device) for j in ids])
        for image_id, out in zip(ids, outputs):
            results += to_coco_results(image_id, out, ds.cat_ids)
    model.train()
    every = [r for part in pg.all_objects(results) for r in part]
    kinds = ("bbox", "segm") if ds.masks else ("bbox",)
    return coco_ap(ds.api, every, ds.ids, kinds) if pg.is_main else {}


def _refuse_foreign_out(out: str) -> None:
    """A detector is written only into a new folder or one holding a fine-tuning run: never over a MoCo training
    run (its last.pt and metrics.csv would be replaced) nor into a path that is a file."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out} is a file, not a folder; pass another --out")
    if os.path.isfile(os.path.join(out, "config.yaml")):
        raise ConfigError(f"{out} holds a MoCo training run (config.yaml, {CHECKPOINT}); a detector is never written "
                          "there: pass another --out (the default is RUN/detect)")
    ckpt = os.path.join(out, CHECKPOINT)
    if os.path.isfile(ckpt) and not _is_finetuning(_readable(ckpt)):
        raise ConfigError(f"{out} holds a {CHECKPOINT} that is not a detector fine-tuning checkpoint; a detector is "
                          "never written over it: pass another --out")


def _readable(path: str) -> dict | None:
    try:
        return ckpt_io.load(path)
    except ckpt_io.CheckpointError:  # unreadable, unsafe or not fastmoco's: in any case not ours to replace
        return None


def _is_finetuning(state) -> bool:
    return isinstance(state, dict) and isinstance(state.get("settings"), dict) and "iteration" in state \
        and state["settings"].get("model") in DETECTORS


def _resume(path: str, s: DetectSettings, model, opt, described: str) -> tuple[int, list, tuple]:
    """(iteration, metrics, epoch loss so far) of the fine-tuning checkpoint ``path``, its tensors loaded."""
    state = ckpt_io.load(path)
    theirs = state["settings"]
    defaults = {f.name: f.default for f in fields(DetectSettings)}  # what a checkpoint older than a setting ran
    differ = [k for k in FIXED_ON_RESUME if theirs.get(k, defaults[k]) != getattr(s, k)]
    if differ or state.get("source") != described:
        what = "; ".join(f"{k} {theirs.get(k, defaults[k])!r} there, {getattr(s, k)!r} now" for k in differ) or \
            f"backbone {state.get('source')!r} there, {described!r} now"
        raise ConfigError(f"{path} is a {theirs.get('model')} fine-tuning run with other settings ({what}); pass "
                          "another --out, or --resume never to start over")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    return state["iteration"], state["metrics"], tuple(state.get("epoch_loss", (0.0, 0)))


class _Run:
    """What a fine-tuning run holds while it trains: settings, data, model, optimizer, position, metrics."""

    def __init__(self, source: str, s: DetectSettings, pg, log):
        self.s, self.pg, self.log = s, pg, log
        show = s.progress and pg.is_main
        tj, ti, vj, vi = pg.together(lambda: data_paths(s, show), main_only=True)
        torch.manual_seed(s.seed)  # the new heads' (and a random backbone's) initial weights
        backbone = load_source(source, s.arch, s.width, s.stem, s.in_channels)
        masks = s.model == "maskrcnn"
        self.train_ds = CocoSet(tj, ti, backbone.in_channels, masks, with_boxes=True)
        self.val_ds = CocoSet(vj, vi, backbone.in_channels, masks, with_boxes=False)
        if all(a.get("iscrowd") for a in self.val_ds.data["annotations"]):
            raise DataError(f"{vj}: every annotation is a crowd region, which COCO AP does not score; the AP would be "
                            "undefined: give a validation set with non-crowd annotations")
        if self.train_ds.cat_ids != self.val_ds.cat_ids:
            raise DataError(f"{tj} and {vj} list other categories: {self.train_ds.cat_ids} vs {self.val_ds.cat_ids}")
        if s.batch_size % pg.world:
            raise ConfigError(f"batch size {s.batch_size} does not split over {pg.world} processes: give a multiple "
                              f"of {pg.world}")
        if len(self.train_ds) < s.batch_size:
            raise ConfigError(f"{len(self.train_ds)} training images, fewer than one batch of {s.batch_size}")
        mean, std = _normalisation(s, backbone, self.train_ds)
        self.size = s.image_size or (self.train_ds.data.get("info") or {}).get("size") or 800
        heads = SMALL_HEADS if self.size <= SMALL_IMAGE else {}
        self.model = build_detector(backbone.resnet, backbone.stem, len(self.train_ds.cat_ids), s.model,
                                    self.norm(s, pg), self.size, mean, std, s.fpn_channels, **heads).to(pg.device)
        try:
            groups = lr_groups(self.model, s.lr_decay)  # one group, or one per layer-wise lr scale (ViTs)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.opt = torch.optim.SGD(groups, lr=s.base_lr, momentum=s.momentum, weight_decay=s.weight_decay)
        self.described, self.mean, self.std = backbone.described, mean, std
        self.steps_per_epoch = len(self.train_ds) // s.batch_size
        self.total = s.epochs * self.steps_per_epoch
        self.iteration, self.metrics = 0, []
        self.epoch_loss = (0.0, 0)  # (sum, steps) of the epoch so far: a mid-epoch resume reports the whole epoch

    @staticmethod
    def norm(s, pg) -> str:
        norm = s.norm or ("syncbn" if pg.distributed and pg.device.type == "cuda" else "bn")
        if norm == "syncbn" and pg.device.type != "cuda":
            raise ConfigError("--norm syncbn needs CUDA (torch's SyncBatchNorm); on CPU use bn or frozen")
        return norm

    def state(self) -> dict:
        return dict(model=self.model.state_dict(), optimizer=self.opt.state_dict(), iteration=self.iteration,
                    epoch=self.iteration // self.steps_per_epoch,
                    metrics=self.metrics, epoch_loss=list(self.epoch_loss), settings=asdict(self.s),
                    source=self.described,
                    mean=list(self.mean), std=list(self.std), image_size=self.size,
                    categories=self.train_ds.data["categories"])


def _average_bn(run: _Run) -> None:
    """Every rank's BN statistics set to their mean, so the ranks evaluate and save one model."""
    run.pg.average_buffers([b for b in run.model.buffers() if b.is_floating_point()])


def _save(run: _Run, out: str) -> None:
    """Process 0 writes the checkpoint; the caller has averaged the BN statistics (`_average_bn`) first."""
    if run.pg.is_main:
        ckpt_io.save_atomic(run.state(), os.path.join(out, CHECKPOINT))


def _write_metrics(rows: list, path: str) -> None:
    import csv

    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _train_epoch(run: _Run, epoch: int, out: str, bar) -> float:
    s, pg, model = run.s, run.pg, run.model
    first = run.iteration - epoch * run.steps_per_epoch
    steps = _steps_of_epoch(s, len(run.train_ds), epoch, first, pg)
    loader = torch.utils.data.DataLoader(_EpochImages(run.train_ds, s.seed, epoch), batch_sampler=steps,
                                         num_workers=s.workers, collate_fn=_collate)
    total, count = run.epoch_loss if first else (0.0, 0)
    for images, targets in loader:
        lr = s.base_lr * lr_factor(run.iteration, run.total, s.warmup_iters)
        for group in run.opt.param_groups:  # a checkpoint from before --lr-decay has no lr_scale: 1
            group["lr"] = lr * group.get("lr_scale", 1.0)
        torch.manual_seed(s.seed * 1_000_003 + run.iteration)  # the RPN's and RoI heads' sampling
        images = [im.to(pg.device) for im in images]
        targets = [{k: v.to(pg.device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise ConfigError(f"the loss became {loss.item()} at step {run.iteration}; lower --lr")
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        _average_grads([p for p in model.parameters() if p.requires_grad], pg)
        run.opt.step()
        run.iteration += 1
        total, count = total + loss.item(), count + 1
        run.epoch_loss = (total, count)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if run.iteration % s.checkpoint_every == 0 and run.iteration % run.steps_per_epoch:
            _average_bn(run)
            _save(run, out)  # an epoch's last step is saved after its evaluation, so a resume cannot skip that
    run.epoch_loss = (0.0, 0)  # saved at the epoch's end: the next epoch starts its own sum
    return total / max(count, 1)


def run_detect(source: str, s: DetectSettings, log=print) -> dict:
    """Fine-tunes and evaluates a detector from ``source``'s backbone; returns the last evaluation."""
    from fastmoco.runs import distributed

    from .draw import draw_predictions

    s.check()
    pg = distributed.setup(s.device)
    log = log if pg.is_main else (lambda *_: None)
    out = s.out or (os.path.join(source, "detect") if os.path.isdir(source) else
                    f"detect-{RANDOM if source == RANDOM else os.path.splitext(os.path.basename(source))[0]}")
    _refuse_foreign_out(out)
    run = _Run(source, s, pg, log)
    ckpt = os.path.join(out, CHECKPOINT)
    if s.resume == "auto" and os.path.isfile(ckpt):
        run.iteration, run.metrics, run.epoch_loss = _resume(ckpt, s, run.model, run.opt, run.described)
        log(f"resuming {ckpt} at step {run.iteration} of {run.total}")
    if pg.is_main:
        os.makedirs(out, exist_ok=True)
    log(f"fine-tuning {s.model} ({run.norm(s, pg)}) from {run.described}: {len(run.train_ds)} training / "
        f"{len(run.val_ds)} validation images at {run.size} px, {s.epochs} epochs of {run.steps_per_epoch} steps, "
        f"batch {s.batch_size}, lr {s.base_lr:g} -> {out}")
    run.model.train()
    bar = tqdm(total=run.total, initial=run.iteration, desc="fine-tune", disable=not (s.progress and pg.is_main),
               dynamic_ncols=True)
    for epoch in range(run.iteration // run.steps_per_epoch, s.epochs):
        loss = _train_epoch(run, epoch, out, bar)
        _average_bn(run)  # once per epoch end: for the evaluation and the checkpoint
        if (epoch + 1) % s.eval_every == 0 or epoch + 1 == s.epochs:
            ap = evaluate(run.model, run.val_ds, pg, max(1, s.batch_size // pg.world), s.progress and pg.is_main)
            if pg.is_main:
                run.metrics.append(dict(epoch=epoch + 1, step=run.iteration, loss=round(loss, 4),
                                        **{k: round(v, 2) for k, v in ap.items()}))
                _write_metrics(run.metrics, os.path.join(out, "metrics.csv"))
                log("epoch {epoch}: ".format(**run.metrics[-1]) +
                    ", ".join(f"{k} {v:.2f}" for k, v in run.metrics[-1].items() if "AP" in k))
        _save(run, out)
    bar.close()
    if pg.is_main and s.show:
        run.model.eval()
        draw_predictions(run.model, run.val_ds, s.show, os.path.join(out, "predictions.png"), pg.device)
    distributed.teardown()
    return dict(run.metrics[-1]) if run.metrics else {}
