"""The run's guard: a step whose loss or gradients are not finite leaves no trace, and a loss spike rolls the run
back to its last good state and cools the learning rate down, instead of either stopping the run or going unseen.

Two parts, on two clocks:

- ``StepTransaction`` (every step, on the device): the step's state tensors (both encoders' parameters and
  buffers, the queue and its pointer, the optimizer's state) are copied before the step; after it, one flag
  (loss and every gradient finite, agreed by all processes) selects the new values or the copies with
  ``torch.where``. No host synchronisation: on CUDA the host learns of a skipped step when it next reads the
  skip counter, at the loop's check cadence. A skipped step is the step not taken: the same weights as a run
  whose data lacked that batch (optimizer state that the skipped step would have created starts at zero, which is
  how SGD, LARS and AdamW start it anyway).
- ``SpikeGuard`` (at each check, on the host): the checked loss against a robust band over the last checked
  values (median + k x MAD). A flagged check (a spike, or skipped non-finite steps) is remembered; ``flags``
  flagged checks among the last ``recent`` roll the run back to the last snapshot (model, momentum encoder, queue
  and pointer, optimizer, scaler), taken every ``snapshot_every`` steps while the band is calm, and scale the lr
  by ``cooldown_lr`` for ``cooldown_steps`` steps. The data goes on with the batches after the bad ones, never
  replaying them. More than ``max_recoveries`` recoveries stop the run (``TrainingDiverged``). Its whole state,
  the snapshot included, goes into each checkpoint, so a resumed run recovers exactly as the uninterrupted one.
"""
import copy
import math
from collections import deque
from dataclasses import dataclass

import torch

from fastmoco.errors import TrainingDiverged


class StepTransaction:
    """All-or-nothing optimizer steps (see the module's docstring).

    On a GPU the verdict stays on the device: every state tensor is copied before the step and selected after it
    (``end``). On the CPU reading the verdict costs no device synchronisation (the tensor is in host memory
    already), so the host decides: only the buffers the forward moves are copied, and a bad step skips the
    optimizer, the EMA and the enqueue (``host_decides``). Both give the same bits."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, pg, host_decides=None):
        self.model, self.optimizer, self.pg = model, optimizer, pg
        self.host_decides = pg.device.type == "cpu" if host_decides is None else host_decides
        # on the host path only the buffers (BN running statistics, queue, pointer): the forward moves them
        self.tensors = list(model.buffers()) if self.host_decides else list(model.state_dict().values())
        self.saved = [t.clone() for t in self.tensors]  # (state_dict values share storage with the model)
        self.skipped = torch.zeros((), dtype=torch.int64, device=pg.device)  # steps skipped so far (device)
        self.opt_saved: list[torch.Tensor] = []  # copies of the optimizer's state (it appears at the first step)
        self._opt_before: set[int] = set()

    def skip(self) -> None:
        """Host path, after a bad verdict: the buffers back as they were before the step."""
        if self.tensors:
            torch._foreach_copy_(self.tensors, self.saved)
        self.skipped += 1

    def _optimizer_tensors(self) -> list[torch.Tensor]:
        return [v for state in self.optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]

    def begin(self) -> None:
        """Copies of the state the step will change (before the forward: it moves BN running statistics)."""
        if self.tensors:
            torch._foreach_copy_(self.saved, self.tensors)
        if self.host_decides:
            return
        opt = self._optimizer_tensors()
        if len(opt) != len(self.opt_saved):  # the first step, or an optimizer state loaded anew
            self.opt_saved = [t.clone() for t in opt]
        elif opt:
            torch._foreach_copy_(self.opt_saved, opt)
        self._opt_before = {id(t) for t in opt}

    def finite(self, loss: torch.Tensor, grads: bool = True) -> torch.Tensor:
        """A 0-d bool tensor: ``loss`` (and with ``grads`` every gradient) finite on every process (one
        all-reduce, no host sync)."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None] if grads else []
        norms = torch._foreach_norm(grads) if grads else []
        ok = torch.isfinite(loss).all()
        if norms:
            ok = ok & torch.isfinite(torch.stack(norms)).all()
        return self.pg.all_true(ok)

    def end(self, ok: torch.Tensor) -> None:
        """Keep the step's values where ``ok``, else put the copies back (and zero optimizer state the step
        created)."""
        for t, saved in zip(self.tensors, self.saved):
            t.copy_(torch.where(ok, t, saved))
        opt = self._optimizer_tensors()
        if len(opt) == len(self.opt_saved) and all(id(t) in self._opt_before for t in opt):
            for t, saved in zip(opt, self.opt_saved):
                t.copy_(torch.where(ok, t, saved))
        else:  # the step created the state (the first step): a skipped first step leaves it at zero
            for t in opt:
                t.copy_(torch.where(ok, t, torch.zeros_like(t)))
        self.skipped += (~ok).to(self.skipped.dtype)


@dataclass
class GuardSettings:
    k: float  # band width in MADs above the median
    window: int  # checked values the band is computed over
    min_values: int  # checked values before the band flags anything
    flags: int  # flagged checks among the last ``recent`` that trigger a rollback
    recent: int
    snapshot_every: int  # steps between snapshots (taken only while the band is calm)
    cooldown_steps: int
    cooldown_lr: float  # lr factor during the cool-down
    max_recoveries: int

    @classmethod
    def from_config(cls, cfg) -> "GuardSettings":
        return cls(k=cfg.guard_k, window=cfg.guard_window, min_values=min(20, cfg.guard_window), flags=3, recent=10,
                   snapshot_every=cfg.guard_snapshot_every, cooldown_steps=cfg.guard_cooldown_steps,
                   cooldown_lr=cfg.guard_cooldown_lr, max_recoveries=cfg.guard_max_recoveries)


class SpikeGuard:
    """Flags, snapshots, rollbacks and the cool-down (see the module's docstring). Every process holds the same
    one: it sees the same (all-reduced) values and takes the same decisions."""

    def __init__(self, settings: GuardSettings, model, optimizer, scaler, checkpoint: str = "last.pt"):
        self.s, self.model, self.optimizer, self.scaler = settings, model, optimizer, scaler
        self.checkpoint = checkpoint  # named when the run stops: the last good state on disk
        self.values: deque = deque(maxlen=settings.window)  # recent good checked losses
        self.recent: deque = deque(maxlen=settings.recent)  # recent checks: flagged or not
        self.recoveries = self.cooldown_left = 0
        self.skipped_seen = 0
        self.snapshot: dict | None = None
        self.snapshot_step = -1
        self.last_cause = ""

    # -- the band ------------------------------------------------------------------------------------------------
    def threshold(self) -> float | None:
        """median + k x MAD of the recent good values (None until there are ``min_values``). The MAD has a floor of
        1 % of the median: a loss that has flattened out must not turn its noise into spikes."""
        if len(self.values) < self.s.min_values:
            return None
        v = sorted(self.values)
        med = v[len(v) // 2]
        mad = sorted(abs(x - med) for x in v)[len(v) // 2]
        return med + self.s.k * max(mad, 0.01 * abs(med))

    def lr_factor(self) -> float:
        return self.s.cooldown_lr if self.cooldown_left > 0 else 1.0

    def stepped(self) -> None:
        """One optimizer step taken (the cool-down counts steps)."""
        if self.cooldown_left > 0:
            self.cooldown_left -= 1

    # -- at each check -------------------------------------------------------------------------------------------
    def check(self, step: int, loss: float, skipped_total: int) -> str | None:
        """The checked (all-process mean) loss and the run's skipped-step count so far. Returns a line to log
        when this check rolled the run back, else None; raises TrainingDiverged past ``max_recoveries``."""
        new_skips = skipped_total - self.skipped_seen
        self.skipped_seen = skipped_total
        limit = self.threshold()
        if new_skips or not math.isfinite(loss):
            cause = f"{new_skips} step(s) with a non-finite loss or gradients skipped"
        elif limit is not None and loss > limit:
            cause = f"loss {loss:.4g} above the band's {limit:.4g}"
        else:
            cause = None
            self.values.append(loss)
        self.recent.append(cause is not None)
        if cause is not None:
            self.last_cause = cause
        if sum(self.recent) >= self.s.flags:
            return self._recover(step)
        # the first calm check, then the first calm check in each further span of snapshot_every steps
        due = self.snapshot is None or step // self.s.snapshot_every > self.snapshot_step // self.s.snapshot_every
        if cause is None and not any(self.recent) and self.cooldown_left == 0 and due:
            self._take_snapshot(step)
        return None

    def start(self, step: int) -> None:
        """The state a run starts from is the first snapshot (unless a checkpoint brought one): a blow-up in the
        first steps, before any calm check, still has a good state to return to."""
        if self.snapshot is None:
            self._take_snapshot(step)

    def _take_snapshot(self, step: int) -> None:
        self.snapshot = dict(model=_clone(self.model.state_dict()), optimizer=_clone(self.optimizer.state_dict()),
                             scaler=copy.deepcopy(self.scaler.state_dict()))
        self.snapshot_step = step

    def _recover(self, step: int) -> str:
        self.recoveries += 1
        where = (f"step {step}: {self.last_cause}; {self.s.flags} of the last {len(self.recent)} checks flagged")
        kept = f"last good checkpoint kept ({self.checkpoint})"
        if self.recoveries > self.s.max_recoveries:
            raise TrainingDiverged(f"{where}: a rollback beyond the {self.s.max_recoveries} that "
                                   f"--guard-max-recoveries allows; stopped, {kept}; lower --lr")
        if self.snapshot is None:
            raise TrainingDiverged(f"{where} before any calm check to roll back to; stopped, {kept}; lower --lr")
        self.model.load_state_dict(self.snapshot["model"])
        self.optimizer.load_state_dict(_clone(self.snapshot["optimizer"]))
        self.scaler.load_state_dict(self.snapshot["scaler"])
        self.recent.clear()
        self.cooldown_left = self.s.cooldown_steps
        return (f"guard: {where}; rolled back to the state of step {self.snapshot_step} (recovery "
                f"{self.recoveries} of at most {self.s.max_recoveries}), lr x {self.s.cooldown_lr:g} for "
                f"{self.s.cooldown_steps} steps; training goes on with the next batches")

    # -- checkpoints -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return dict(values=list(self.values), recent=list(self.recent), recoveries=self.recoveries,
                    cooldown_left=self.cooldown_left, skipped_seen=self.skipped_seen,
                    snapshot_step=self.snapshot_step, last_cause=self.last_cause, snapshot=self.snapshot)

    def load_state_dict(self, state: dict) -> None:
        self.values.extend(state["values"])
        self.recent.extend(state["recent"])
        self.recoveries, self.cooldown_left = state["recoveries"], state["cooldown_left"]
        self.skipped_seen, self.snapshot_step = state["skipped_seen"], state["snapshot_step"]
        self.last_cause, self.snapshot = state["last_cause"], state["snapshot"]


def _clone(obj):
    """A deep copy whose tensors own their memory (a snapshot must not follow the live weights)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(v) for v in obj)
    return copy.deepcopy(obj)
