"""Where a run's step time goes: data wait, forward + loss, backward, optimizer, EMA + enqueue, and the loop's
checks / logging / checkpoints, as shares of the sampled steps' time.

Every ``every``-th step is sampled; only a sampled step marks its phases, and on CUDA a mark synchronises the
device first (otherwise it would time the launch, not the work). The other steps run untouched: no host sync is
added to them. On CPU the work is done when the call returns, so a mark is a clock read.
"""
import time

import torch

PHASES = ("data", "forward", "backward", "optimizer", "ema_enqueue", "checks")
LABELS = {"data": "data wait", "forward": "forward + loss", "backward": "backward", "optimizer": "optimizer",
          "ema_enqueue": "EMA + enqueue", "checks": "checks/logging/checkpoints"}
# A data-wait share above this is called out with a hint: the input pipeline then sets the pace, not the model
DATA_BOUND = 0.4


class StepTimes:
    """Accumulates the sampled steps' phase times over an epoch."""

    def __init__(self, device: torch.device, every: int = 10):
        self.sync = device.type == "cuda"
        self.device, self.every = device, every
        self.reset()

    def reset(self) -> None:
        self.totals = dict.fromkeys(PHASES, 0.0)
        self.sampled = 0
        self.active = False

    def start(self, step: int) -> None:
        """The beginning of step ``step`` (the run's step counter, so the sampled steps survive a resume)."""
        self.active = step % self.every == 0
        if self.active:
            self.sampled += 1
            self.last = self._now()

    def mark(self, phase: str) -> None:
        """The time since the previous mark goes to ``phase`` (sampled steps only)."""
        if self.active:
            now = self._now()
            self.totals[phase] += now - self.last
            self.last = now

    def _now(self) -> float:
        if self.sync:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def shares(self) -> dict[str, float] | None:
        """Each phase's share of the sampled steps' time (None before any sample)."""
        total = sum(self.totals.values())
        if not self.sampled or total <= 0:
            return None
        return {p: t / total for p, t in self.totals.items()}

    def line(self, shares: dict[str, float]) -> str:
        return "step time: " + ", ".join(f"{LABELS[p]} {100 * shares[p]:.0f} %" for p in PHASES)


def data_hint(shares: dict[str, float], loader: str, workers: int, shards: bool) -> str | None:
    """One line naming the cause and the remedies when waiting for data dominates the step."""
    if shares["data"] < DATA_BOUND:
        return None
    remedies = [f"more --workers (now {workers})"]
    if loader != "dali":
        remedies.append("--loader dali (decoding and augmenting on the GPU, for image folders and shards)")
    if shards:
        remedies.append("shards copied to local disk if they are read from network storage")
    return (f"hint: {100 * shares['data']:.0f} % of the step time is spent waiting for data, so the input "
            f"pipeline sets the pace; try " + ", ".join(remedies))
