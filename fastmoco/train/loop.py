"""The training loop: data -> the method's step (compiled, DDP) -> its after-step (EMA, enqueue), with checkpoints
at epoch ends, every ``save_every_min`` minutes and on SIGTERM/SIGINT, the kNN monitor and the run's metrics.

``train(cfg)`` is ``Trainer(cfg).fit()``. Under torchrun every process runs it; rank 0 alone writes the run
directory (checkpoints, metrics.csv, TensorBoard, curves.png), draws the progress bar and runs the kNN monitor
while the others wait at a barrier.
"""
import dataclasses
import math
import os
import random
import time

import numpy as np
import torch
from tqdm import tqdm

from fastmoco.data import build_data
from fastmoco.data.shards.manifest import is_shards
from fastmoco.models import build_method

from fastmoco.errors import ConfigError, TrainingDiverged
from fastmoco.evaluate.knn import knn_accuracy
from fastmoco.runs import checkpoint as ckpt_io
from fastmoco.runs import distributed
from fastmoco.runs.checkpoint import build_payload, checkpoint_path
from fastmoco.runs.config import TrainConfig, resume_changes
from fastmoco.runs.directory import RunLock
from fastmoco.runs.read import init_backbone

from . import preflight
from .guard import GuardSettings, SpikeGuard
from .metrics import Metrics
from .optim import build_optimizer
from .schedules import lr_factor, momentum_at
from .state import Position, RunStopped, SaveTimer, StopRequest, restore
from .step import MocoStep
from .timing import StepTimes, data_hint


def _seed_all(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _prepare_out(cfg: TrainConfig, resume_path) -> None:
    """The run directory exists, is writable, and holds no other run unless this one resumes or overwrites it."""
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise ConfigError(f"--out {cfg.out} is a file, not a directory")
    try:
        os.makedirs(cfg.out, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the run directory {cfg.out} ({exc.strerror})") from None
    if not os.access(cfg.out, os.W_OK):
        raise ConfigError(f"the run directory {cfg.out} is not writable")
    existing = ckpt_io.resolve_resume("auto", cfg.out)
    if not resume_path and existing and not cfg.overwrite:
        raise ConfigError(f"{cfg.out} already holds a run ({existing}): continue it with --resume auto, replace it "
                          "with --overwrite, or choose another --out")


# Settings that may differ between processes: where and how each one runs, not what it trains. The data paths
# may differ too (each node's own mount point); what they hold is compared instead (``_data_facts``).
LOCAL_SETTINGS = ("device", "threads", "workers", "progress", "data", "val")


class Trainer:
    def __init__(self, cfg: TrainConfig, log=print):
        self.t_start = time.time()
        self.pg = distributed.setup(cfg.device)
        self.requested = cfg.to_dict()
        self.cfg = cfg = cfg.for_runtime(self.pg.device.type, self.pg.world)
        self.log = log if self.pg.is_main else (lambda *_: None)
        self.lock = self.metrics = None
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # the first collective: every process must train the same thing (else hangs, or gloo errors deep inside)
        self.pg.agree_on({k: v for k, v in cfg.to_dict().items() if k not in LOCAL_SETTINGS}, "settings")
        resume = cfg.resume or ("auto" if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0 else None)
        resume_path = self.pg.together(lambda: self._claim_out(resume), main_only=True)  # rank 0 decides
        _seed_all(cfg.seed)
        state = self.pg.together(lambda: self._build(resume_path))
        self.pg.agree_on(self._data_facts(), "the training data")
        self.base_lr = cfg.lr_for(self.pg.world)
        self.milestones = cfg.milestones()
        self.optimizer = build_optimizer(cfg, self.model.query_network().parameters(), self.base_lr)
        self.step = MocoStep(self.model, self.optimizer, cfg, self.pg)
        self.guard = (SpikeGuard(GuardSettings.from_config(cfg), self.model, self.optimizer, self.step.scaler,
                                 checkpoint_path(cfg.out)) if cfg.guard == "on" else None)
        self.times = StepTimes(self.pg.device)
        self.pos = Position()
        if resume_path:  # every rank loads the same file, before DDP's first step
            self.pos = self.pg.together(lambda: restore(state, self.model, self.optimizer, self.step.scaler,
                                                        resume_path))
            self._restore_guard(state)
            fresh = " (imported weights: the optimizer state starts afresh)" if "imported" in state else ""
            del state
            self.log(f"resumed from {resume_path} at epoch {self.pos.epoch + 1}, sample {self.pos.samples}{fresh}")
        self.pg.together(self._open_outputs, main_only=True)
        self.log(f"{self.pg.world} process(es) on {self.pg.device.type}, {self.data.loader} loader; global batch "
                 f"{cfg.global_batch(self.pg.world)}, lr {self.base_lr:g}"
                 + (f"; multi-crop: {cfg.small_crops} small views of {self.data.small_size} px per image"
                    if cfg.small_crops else ""))
        self.data_meta = dict(in_channels=self.data.in_channels, image_size=self.data.image_size,
                              raw_shape=self.data.raw_shape, mean=self.data.mean, std=self.data.std)
        # reading the loss is a host sync: every step where that is free (CPU), every 20 steps on CUDA
        self.check_every = 1 if self.pg.device.type == "cpu" else 20

    def _restore_guard(self, state: dict) -> None:
        """The guard where the checkpoint left it (a run resumed after a recovery recovers as the uninterrupted
        one would); a checkpoint without one (guard off then, or older) starts the guard afresh."""
        if self.guard is not None and state.get("guard"):
            self.guard.load_state_dict(state["guard"])
        if self.step.transaction is not None:
            self.step.transaction.skipped.fill_(self.pos.skipped)

    # -- start-up ----------------------------------------------------------------------------------------------
    def _claim_out(self, resume) -> str | None:
        """Rank 0: the checkpoint to resume from (or None); the run directory checked and locked."""
        resume_path = ckpt_io.resolve_resume(resume, self.cfg.out)
        _prepare_out(self.cfg, resume_path)
        self.lock = RunLock(self.cfg.out)
        for f in ckpt_io.remove_stale_temporaries(self.cfg.out):
            self.log(f"removed {f}, left by a write that was killed")
        return resume_path

    def _build(self, resume_path) -> dict | None:
        """Every rank: the data, the pre-flight checks, the model (with --init weights) and the checkpoint to
        resume from, read and checked against the settings; no collectives, so ``together`` can agree on it."""
        cfg = self.cfg
        self.data = build_data(cfg, self.pg.device, self.pg.rank, self.pg.world)
        if self.data.notice:
            self.log(self.data.notice)
        preflight.check_image_size(cfg, self.data.image_size)
        if self.data.small_crops:
            preflight.check_image_size(cfg, self.data.small_size, "--small-crop-size")
        preflight.check_memory(cfg, self.data.in_channels, self.data.image_size, self.pg.device, self.data.small_size)
        self.model = build_method(cfg, self.data.in_channels).to(self.pg.device)
        if cfg.init:
            init_backbone(self.model, cfg.init)
            self.log(f"backbone weights from {cfg.init} ({cfg.arch}, width {cfg.width}, {cfg.stem} stem)")
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if not resume_path:
            return None
        state = ckpt_io.load(resume_path, fallback=True)
        changes = resume_changes(state.get("config", {}), cfg, imported="imported" in state)
        if changes:
            self.log("settings changed on resume: " + ", ".join(changes))
        return state

    def _data_facts(self) -> dict:
        """What every rank's data must agree on (the paths may differ, their contents may not)."""
        d = self.data
        return dict(images=d.num_samples, in_channels=d.in_channels, image_size=d.image_size,
                    loader=d.loader, small_size=d.small_size)

    def _open_outputs(self) -> None:
        """Rank 0: the resolved config and the metrics files."""
        self.cfg.save(os.path.join(self.cfg.out, "config.yaml"))
        self.metrics = Metrics(self.cfg.out, self.pos.history)

    # -- schedules ---------------------------------------------------------------------------------------------
    def _progress(self) -> tuple[float, float]:
        n = self.data.num_samples
        return self.pos.epoch + self.pos.samples / n, self.data.samples_per_step / n

    def _set_lr(self, t: float, dt: float) -> float:
        cfg = self.cfg
        lr = self.base_lr * lr_factor(t, dt, cfg.epochs, cfg.warmup_epochs, cfg.schedule, self.milestones)
        if self.guard is not None:
            lr *= self.guard.lr_factor()  # the cool-down after a rollback
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    # -- checkpoints -------------------------------------------------------------------------------------------
    def _save(self, loss_sum: torch.Tensor | None = None, loss_steps: torch.Tensor | None = None) -> str:
        """Every rank calls it; rank 0 writes, and a failed write (a full disk) stops every rank with its line."""
        path = checkpoint_path(self.cfg.out)
        if loss_sum is not None:
            self.pos.loss_sum, self.pos.loss_steps = float(loss_sum), int(loss_steps)
        if self.step.transaction is not None:
            self.pos.skipped = int(self.step.transaction.skipped)

        def write():
            pos = dataclasses.replace(self.pos, elapsed_s=self.pos.elapsed_s + time.time() - self.t_run)
            guard = self.guard.state_dict() if self.guard is not None else None
            ckpt_io.save_atomic(build_payload(self.model, self.optimizer, self.step.scaler, pos, self.cfg,
                                              self.requested, self.data_meta, self.pg.world, guard), path,
                                keep_previous=True)

        self.pg.together(write, main_only=True)
        return path

    # -- one epoch ---------------------------------------------------------------------------------------------
    def _checks(self, loss: torch.Tensor, stop: StopRequest, timer: SaveTimer):
        """The step's loss and the guard's skip count (one host sync) and, agreed by all ranks in one all-reduce:
        loss non-finite on any rank, stop requested on any rank, mid-epoch save due on any rank."""
        tr = self.step.transaction
        if tr is None:
            value, skipped = loss.item(), 0
        else:
            value, skipped = torch.stack([loss.double(), tr.skipped.double()]).tolist()
        return value, int(skipped), self.pg.any_of([not math.isfinite(value), stop.requested, timer.due()])

    def _guard_check(self, value: float, skipped: int) -> None:
        """The guard's view of this check: the loss averaged over the ranks (so every rank decides alike); a
        rollback is logged and counted, too many stop the run."""
        pos = self.pos
        line = self.guard.check(pos.step, self.pg.mean(value), skipped)
        pos.skipped = skipped
        if line:
            self.log(line)
            if self.metrics:
                self.metrics.event(pos.step, "recoveries", self.guard.recoveries)

    def _run_epoch(self, epoch: int, stop: StopRequest, timer: SaveTimer) -> str:
        """Trains from the position's sample to the epoch's end; returns 'epoch', 'max_steps' or raises."""
        cfg, pos, times = self.cfg, self.pos, self.times
        steps = self.data.steps(pos.samples)
        batches = iter(self.data.epoch(epoch, pos.samples))
        loss_sum = torch.full((), pos.loss_sum, device=self.pg.device)
        loss_steps = torch.full((), pos.loss_steps, device=self.pg.device)  # steps in the mean (skipped ones not)
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and self.pg.is_main),
                   dynamic_ncols=True, leave=False, mininterval=0.5)
        t_epoch, seen = time.time(), 0
        times.reset()
        for i in range(steps):
            times.start(pos.step)
            micro = [next(batches) for _ in range(cfg.accum_steps)]
            times.mark("data")
            t, dt = self._progress()
            lr = self._set_lr(t, dt)
            loss = self.step(micro, momentum_at(t, cfg.epochs, cfg.m, cfg.m_schedule), times)
            if self.step.ok is None:
                loss_sum += loss.float()
                loss_steps += 1
            else:  # a skipped step's loss is not part of the epoch's mean
                loss_sum += torch.where(self.step.ok, loss.float(), 0.0)
                loss_steps += self.step.ok.to(loss_steps.dtype)
            pos.samples += self.data.samples_per_step
            pos.step += 1
            seen += self.data.samples_per_step
            if self.guard is not None:
                self.guard.stepped()
            bar.update()
            if pos.step % self.check_every == 0 or i == steps - 1:
                value, skipped, (bad, stopping, save_due) = self._checks(loss, stop, timer)
                if self.guard is not None:
                    self._guard_check(value, skipped)
                elif bad:
                    raise TrainingDiverged(
                        f"loss became {value} at epoch {epoch + 1}, step {pos.step}; stopped, last good checkpoint "
                        f"kept ({checkpoint_path(cfg.out)}); lower --lr or check the data (or train with --guard on)")
                if self.metrics:
                    self.metrics.step(pos.step, value, lr)
                bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.3g}", pairs_s=f"{seen / (time.time() - t_epoch):.0f}",
                                refresh=False)  # drawn at the bar's own pace (mininterval), not every step
                if stopping:
                    bar.close()
                    raise RunStopped(stop.signal or "a stop request on another process",
                                     self._save(loss_sum, loss_steps), pos)
                if save_due and i < steps - 1:
                    self._save(loss_sum, loss_steps)
                    timer.reset()
            times.mark("checks")
            if cfg.max_steps and pos.step >= cfg.max_steps and i < steps - 1:
                bar.close()
                self._save(loss_sum, loss_steps)
                return "max_steps"
        bar.close()
        next(batches, None)  # lets the epoch's source finish: its end-of-epoch report (replaced images) runs
        pos.loss_steps = int(loss_steps)
        self.epoch_loss = float(loss_sum) / max(pos.loss_steps, 1)
        self.epoch_loss = self.pg.mean(self.epoch_loss)
        self.epoch_pairs_s = seen * self.pg.world / (time.time() - t_epoch)
        return "epoch"

    # -- epoch end -------------------------------------------------------------------------------------------
    def _knn(self):
        """Rank 0 runs the monitor on its (plain, eval-mode) backbone; the other ranks wait for its outcome. The
        monitor only watches: when it fails (unreadable evaluation data, say) the epoch is recorded and saved
        without a kNN score, and one line says why."""
        def monitor():
            if self.knn_sets is None:
                return None
            try:
                return knn_accuracy(self.model.backbone, self.knn_sets, self.cfg.knn_k, self.cfg.knn_t,
                                    self.cfg.channels_last)
            except Exception as exc:  # noqa: BLE001 - whatever broke, training and its checkpoint go on
                reason = str(exc).strip().splitlines()
                self.log(f"kNN monitor failed, no score this epoch ({type(exc).__name__}: "
                         f"{reason[-1] if reason else ''}); the checkpoint is written as usual")
                return None

        return self.pg.together(monitor, main_only=True)

    def _end_epoch(self, epoch: int, last: bool):
        cfg, pos = self.cfg, self.pos
        if not math.isfinite(self.epoch_loss):
            raise TrainingDiverged(f"loss became {self.epoch_loss} in epoch {epoch + 1}; stopped, last good "
                                   "checkpoint kept")
        knn = self._knn() if last or (cfg.knn_every and (epoch + 1) % cfg.knn_every == 0) else None
        t, _ = self._progress()
        pos.epoch, pos.samples, pos.loss_sum, pos.loss_steps = epoch + 1, 0, 0.0, 0
        self.pg.together(lambda: self._record(epoch, knn, t), main_only=True)
        self._save()

    def _record(self, epoch: int, knn, t: float) -> None:
        """Rank 0: the epoch's row in metrics.csv / TensorBoard, and its log line."""
        cfg, pos = self.cfg, self.pos
        elapsed = pos.elapsed_s + time.time() - self.t_run
        row = dict(epoch=epoch + 1, step=pos.step, loss=round(self.epoch_loss, 5),
                   lr=self.optimizer.param_groups[0]["lr"], momentum=momentum_at(t, cfg.epochs, cfg.m,
                                                                                 cfg.m_schedule),
                   knn_top1="" if knn is None else round(knn, 2), pairs_per_s=round(self.epoch_pairs_s, 1),
                   elapsed_s=round(elapsed, 1), skipped_steps=pos.skipped,
                   recoveries=self.guard.recoveries if self.guard is not None else "")
        shares = self.times.shares()
        if shares:
            row.update({f"time_{p}": round(100 * v, 1) for p, v in shares.items()})
        self.metrics.epoch(row)
        pos.history = self.metrics.history
        self.log(f"epoch {epoch + 1}/{cfg.epochs}  loss {self.epoch_loss:.4f}  {self.epoch_pairs_s:.0f} pairs/s"
                 + (f"  kNN {knn:.2f} %" if knn is not None else "")
                 + (f"  ({pos.skipped} non-finite steps skipped so far)" if pos.skipped else ""))
        if shares:
            self.log("  " + self.times.line(shares))
            hint = data_hint(shares, self.data.loader, cfg.workers, is_shards(cfg.data))
            if hint:
                self.log("  " + hint)

    # -- the run -----------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.cfg
        self.knn_sets = self.data.knn_sets() if self.pg.is_main else None
        if self.pg.is_main and self.knn_sets is None:
            self.log(self.data.monitor_off())
        stop, timer = StopRequest(), SaveTimer(cfg.save_every_min)
        if self.guard is not None:
            self.guard.start(self.pos.step)
        self.t_run = time.time()
        knn = None
        if self._nothing_left():
            stop.restore()
            self.log(self._nothing_left())
            return self._summary(knn)
        try:
            for epoch in range(self.pos.epoch, cfg.epochs):
                self.model.train()
                if self._run_epoch(epoch, stop, timer) == "max_steps":
                    knn = self._knn()
                    break
                last = epoch == cfg.epochs - 1 or bool(cfg.max_steps and self.pos.step >= cfg.max_steps)
                self._end_epoch(epoch, last)
                timer.reset()
                if last:
                    break
        finally:
            stop.restore()
        return self._summary(knn)

    def _nothing_left(self) -> str | None:
        """Why a resumed run has nothing to train (its checkpoint already reached --epochs or --max-steps)."""
        cfg, pos = self.cfg, self.pos
        if pos.epoch >= cfg.epochs:
            return (f"nothing to train: {cfg.out} has finished all {cfg.epochs} epochs (pass a larger --epochs to "
                    "train on)")
        if cfg.max_steps and pos.step >= cfg.max_steps:
            return (f"nothing to train: {cfg.out} stopped at step {pos.step}, --max-steps is {cfg.max_steps} (raise "
                    "it, or pass --max-steps 0 to train to the end of --epochs)")
        return None

    def _summary(self, knn) -> dict:
        plot = None
        if self.metrics:
            plot = self.metrics.plot()
            self.metrics.close()
            final = [r for r in self.metrics.history if r["knn_top1"] != ""]
            if knn is None and final:
                knn = final[-1]["knn_top1"]
        summary = dict(knn_top1=knn, epochs=self.pos.epoch, steps=self.pos.step,
                       wall_s=round(time.time() - self.t_start, 1), out=self.cfg.out, plot=plot)
        if knn is not None:
            self.log(f"kNN accuracy (k={self.cfg.knn_k}, t={self.cfg.knn_t}): {knn:.2f} %")
        self.log(f"run directory: {self.cfg.out}  (wall time {summary['wall_s']:.0f} s)")
        return summary

    def close(self) -> None:
        if self.metrics:
            self.metrics.close()
        if self.lock:
            self.lock.release()
        distributed.teardown()


def train(cfg: TrainConfig, log=print) -> dict:
    """Run (or resume) training as ``cfg`` says; returns a summary with the final kNN accuracy (rank 0)."""
    trainer = None
    try:
        trainer = Trainer(cfg, log)
        return trainer.fit()
    finally:
        if trainer is not None:
            trainer.close()
        else:
            distributed.teardown()
