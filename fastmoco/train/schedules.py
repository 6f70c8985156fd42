"""Learning-rate and key-momentum schedules as functions of training progress measured in epochs.

Progress ``t`` is the epoch fraction reached *before* the step (``epoch + samples done / samples per epoch``) and
``dt`` one step's share of an epoch, so the schedules do not depend on the batch size or the process count: a run
resumed with other settings continues on the same curve.
"""
import math


def lr_factor(t: float, dt: float, epochs: float, warmup: float, schedule: str, milestones: list[float]) -> float:
    """Multiplier of the base lr for the step taken at progress ``t``.

    Warm-up rises linearly and reaches 1 at the end of ``warmup`` epochs (the first step already gets
    ``dt / warmup``, never 0); then cosine decays towards 0 at ``epochs`` (the last step still gets > 0), or the step
    schedule multiplies by 0.1 at each milestone (fractions of the post-warm-up span).
    """
    if t < warmup:
        return min(1.0, (t + dt) / warmup)
    progress = (t - warmup) / max(epochs - warmup, 1e-12)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 0.1 ** sum(progress >= m for m in milestones)


def momentum_at(t: float, epochs: float, m0: float, schedule: str) -> float:
    """const: m0 throughout; cosine: from m0 at t=0 up to 1 at the end of training (BYOL / MoCo v3)."""
    if schedule == "const":
        return m0
    return 1.0 - (1.0 - m0) * 0.5 * (1.0 + math.cos(math.pi * min(t / epochs, 1.0)))
