"""The training loop: data -> MoCo step -> EMA + enqueue, with per-epoch atomic checkpoints, kNN, metrics."""
import math
import os
import random
import time

import numpy as np
import torch
from tqdm import tqdm

from fastmoco.data import build_data
from fastmoco.models import MoCo

from . import checkpoint as ckpt_io
from .config import TrainConfig
from .knn import knn_accuracy
from .metrics import Metrics


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is left as it was."""


def lr_factor(step: int, total: int, warmup: int, schedule: str, milestones: list[float]) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 0.1 ** sum(progress >= m for m in milestones)


def momentum_at(step: int, total: int, m0: float, schedule: str) -> float:
    """const: m0 throughout; cosine: from m0 up to 1 at the last step (MoCo v3 / BYOL)."""
    if schedule == "const":
        return m0
    return 1.0 - (1.0 - m0) * 0.5 * (1.0 + math.cos(math.pi * step / max(1, total)))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return dev


def train_step(model, optimizer, scaler, v1, v2, amp_dtype):
    """One MoCo step up to the optimizer update; returns (detached loss, keys to enqueue)."""
    with torch.autocast(v1.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss, keys = model(v1, v2)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), keys


def _seed_all(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(cfg: TrainConfig, log=print) -> dict:
    """Run (or resume) training as ``cfg`` says; returns a summary with the final kNN accuracy."""
    t_start = time.time()
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    os.makedirs(cfg.out, exist_ok=True)
    resume_path = ckpt_io.resolve_resume(cfg.resume, cfg.out)
    _seed_all(cfg.seed)

    data = build_data(cfg, device)
    model = MoCo.from_config(cfg, data.in_channels).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.encoder_q.parameters(), lr=cfg.lr, momentum=cfg.sgd_momentum,
                                weight_decay=cfg.weight_decay)
    steps_per_epoch = len(data)
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    milestones = [float(s) for s in cfg.lr_steps.split(",") if s.strip()]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, cfg.schedule, milestones))
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp_dtype] if cfg.amp else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    start_epoch, step, history, prior_s = 0, 0, [], 0.0
    if resume_path:
        state = ckpt_io.load(resume_path)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ckpt_io.CheckpointError(
                f"checkpoint {resume_path} does not fit this model/config ({str(exc).splitlines()[0]})") from None
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        ckpt_io.set_rng_state(state["rng"])
        start_epoch, step, history = state["epoch"], state["step"], state["history"]
        prior_s = state.get("elapsed_s", 0.0)
        log(f"resumed from {resume_path} at epoch {start_epoch}")
    cfg.save(os.path.join(cfg.out, "config.yaml"))
    metrics = Metrics(cfg.out, history)
    knn_sets = data.knn_sets()
    if knn_sets is None:
        log("kNN monitor off: no labelled validation set (pass --val DIR for an ImageFolder)")
    sync_every = 1 if device.type == "cpu" else 20  # NaN check = host sync: every step only where it is free

    data_meta = dict(in_channels=data.in_channels, image_size=data.image_size, raw_shape=data.raw_shape,
                     mean=data.mean, std=data.std)
    knn, t_run = None, time.time()
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t_epoch, seen, loss_sum, n_loss = time.time(), 0, torch.zeros((), device=device), 0
        bar = tqdm(data.epoch(epoch), total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not cfg.progress, dynamic_ncols=True, leave=False, mininterval=0.5)
        for i, (v1, v2) in enumerate(bar):
            if cfg.channels_last:
                v1 = v1.contiguous(memory_format=torch.channels_last)
                v2 = v2.contiguous(memory_format=torch.channels_last)
            loss, keys = train_step(model, optimizer, scaler, v1, v2, amp_dtype)
            scheduler.step()
            model.momentum_update(momentum_at(step, total, cfg.m, cfg.m_schedule))
            model.enqueue(keys)
            loss_sum += loss.float()
            n_loss += 1
            step += 1
            seen += v1.shape[0]
            if i % sync_every == 0 or i == steps_per_epoch - 1:
                value = loss.item()
                if not math.isfinite(value):
                    raise TrainingDiverged(
                        f"loss became {value} at epoch {epoch + 1}, step {step}; stopped, last good checkpoint "
                        f"kept ({os.path.join(cfg.out, 'last.pt')}); lower --lr or check the data")
                lr = scheduler.get_last_lr()[0]
                metrics.step(step, value, lr)
                bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.3g}", pairs_s=f"{seen / (time.time() - t_epoch):.0f}",
                                refresh=False)  # drawn at the bar's own pace (mininterval), not every step
            if cfg.max_steps and step >= cfg.max_steps:
                break
        bar.close()
        epoch_loss = (loss_sum / max(n_loss, 1)).item()
        if not math.isfinite(epoch_loss):
            raise TrainingDiverged(f"loss became {epoch_loss} in epoch {epoch + 1}; stopped, last good checkpoint kept")
        pairs_s = seen / (time.time() - t_epoch)
        last = epoch == cfg.epochs - 1 or (cfg.max_steps and step >= cfg.max_steps)
        knn = None
        if knn_sets is not None and (last or (cfg.knn_every and (epoch + 1) % cfg.knn_every == 0)):
            knn = knn_accuracy(model.backbone, knn_sets, cfg.knn_k, cfg.knn_t, cfg.channels_last)
        elapsed = prior_s + time.time() - t_run
        row = dict(epoch=epoch + 1, step=step, loss=round(epoch_loss, 5), lr=scheduler.get_last_lr()[0],
                   momentum=momentum_at(step, total, cfg.m, cfg.m_schedule), knn_top1="" if knn is None else
                   round(knn, 2), pairs_per_s=round(pairs_s, 1), elapsed_s=round(elapsed, 1))
        metrics.epoch(row)
        log(f"epoch {epoch + 1}/{cfg.epochs}  loss {epoch_loss:.4f}  {pairs_s:.0f} pairs/s"
            + (f"  kNN {knn:.2f} %" if knn is not None else ""))
        ckpt_io.save_atomic(dict(model=model.state_dict(), optimizer=optimizer.state_dict(),
                                 scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
                                 epoch=epoch + 1, step=step, history=metrics.history, rng=ckpt_io.rng_state(),
                                 config=cfg.to_dict(), elapsed_s=elapsed, data=data_meta),
                            os.path.join(cfg.out, "last.pt"))
        if last:
            break
    plot = metrics.plot()
    metrics.close()
    final = [r for r in metrics.history if r["knn_top1"] != ""]
    summary = dict(knn_top1=final[-1]["knn_top1"] if final else None, epochs=len(metrics.history), steps=step,
                   wall_s=round(time.time() - t_start, 1), out=cfg.out, plot=plot)
    if summary["knn_top1"] is not None:
        log(f"kNN accuracy (k={cfg.knn_k}, t={cfg.knn_t}): {summary['knn_top1']:.2f} %")
    log(f"run directory: {cfg.out}  (wall time {summary['wall_s']:.0f} s)")
    return summary
