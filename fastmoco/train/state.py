"""The checkpointable run state: where a run stands (epoch, samples done inside it, optimizer steps), restoring it
from a checkpoint, stop requests from signals, and timed mid-epoch saves.

A checkpoint is written at every epoch end, every ``save_every_min`` minutes inside an epoch, and when the run
is asked to stop (SIGTERM from a scheduler, Ctrl-C). Its position is counted in *samples* of the epoch's fixed
order, so a run resumed with another process count continues with the next unseen images.
"""
import signal
import time
from dataclasses import dataclass, field

from fastmoco.models import load_exactly

from fastmoco.runs import checkpoint as ckpt_io

@dataclass
class Position:
    epoch: int = 0  # epochs finished
    samples: int = 0  # samples of epoch ``epoch`` already trained on (its fixed order, all processes together)
    step: int = 0  # optimizer steps taken in the whole run
    loss_sum: float = 0.0  # this epoch's summed step losses so far (the epoch's mean loss survives a resume)
    loss_steps: int = 0
    history: list = field(default_factory=list)  # metrics rows of finished epochs
    elapsed_s: float = 0.0  # training time before this process started
    skipped: int = 0  # steps the guard skipped in the whole run (a non-finite loss or gradients)


def restore(state: dict, model, optimizer, scaler, path: str) -> Position:
    """Load a checkpoint's tensors into the run's objects; returns where it stood. An imported whole model (an
    original MoCo v3 checkpoint) resumes at its epoch with a fresh optimizer state; other imports start runs with
    --init only."""
    if "imported" in state and not state["imported"].get("resumable"):
        raise ckpt_io.CheckpointError(f"{path} holds imported weights without a training state; start a new run "
                                      f"from them with --init {path}")
    load_exactly(model, state["model"], f"checkpoint {path}", ckpt_io.CheckpointError, "this model/config")
    if "imported" in state:
        return Position(epoch=state["imported"]["epoch"])
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ckpt_io.CheckpointError(
            f"checkpoint {path} does not fit this model/config ({str(exc).splitlines()[0]})") from None
    scaler.load_state_dict(state["scaler"])
    ckpt_io.set_rng_state(state["rng"])
    if "position" in state:
        return Position(**state["position"])
    # checkpoints written before mid-epoch saves existed: always at an epoch end
    return Position(epoch=state["epoch"], step=state["step"], history=state["history"],
                    elapsed_s=state.get("elapsed_s", 0.0))


class StopRequest:
    """SIGTERM / SIGINT set a flag instead of killing the process; the loop checks it between steps, writes a
    checkpoint and ends the run. The previous handlers come back on ``restore``."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal = None
        self._previous = {}
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with whoever owns them
                pass

    def _handle(self, signum, _frame):
        self.signal = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class SaveTimer:
    """True every ``minutes`` minutes of wall time (never when minutes is 0)."""

    def __init__(self, minutes: float):
        self.interval = minutes * 60.0
        self.last = time.monotonic()

    def due(self) -> bool:
        return bool(self.interval) and time.monotonic() - self.last >= self.interval

    def reset(self) -> None:
        self.last = time.monotonic()


class RunStopped(Exception):
    """The run stopped on a signal after writing its checkpoint; the CLI prints it as one line."""

    def __init__(self, signame: str, path: str, pos: Position):
        super().__init__(f"stopped by {signame} at epoch {pos.epoch + 1}, step {pos.step}; checkpoint written to "
                         f"{path} (continue with --resume auto)")
        self.signame = signame
