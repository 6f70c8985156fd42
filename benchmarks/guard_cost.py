"""The guard's cost per step: the default Fashion-MNIST run with ``--guard on`` against ``--guard off``, in one
process, interleaved (off, on, off, on, ...) so that both see the same machine state; each run trains one epoch
of ``--steps`` steps and reports its pairs/s (the loop's own figure: data, step, checks).

    python benchmarks/guard_cost.py [--steps 60] [--rounds 4] [--threads 2] [--device-path]

``--device-path`` makes the guarded runs take the GPU's path on this CPU (every state tensor copied before the
step and selected after it on the device) instead of the CPU's (only the buffers copied; the host reads the
verdict): what the GPU path's extra work costs here, not a GPU figure.
"""
import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from fastmoco.runs.config import TrainConfig  # noqa: E402
from fastmoco.train.loop import Trainer  # noqa: E402
from fastmoco.train.state import SaveTimer, StopRequest  # noqa: E402


def one_epoch(guard: str, steps: int, threads: int, out: str, device_path: bool = False) -> float:
    cfg = TrainConfig(subset=128 * steps, epochs=1, guard=guard, progress=False, threads=threads, out=out,
                      overwrite=True).resolved()
    trainer = Trainer(cfg, log=lambda *_: None)
    if device_path and trainer.step.transaction is not None:
        tr = trainer.step.transaction
        trainer.step.transaction = type(tr)(trainer.model, trainer.optimizer, trainer.pg, host_decides=False)
    stop = StopRequest()
    try:
        trainer.model.train()
        trainer.t_run = time.time()
        trainer._run_epoch(0, stop, SaveTimer(0))
        return trainer.epoch_pairs_s
    finally:
        stop.restore()
        trainer.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device-path", action="store_true")
    a = p.parse_args()
    import torch

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    rates = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for guard in ("off", "on"):
                rates[guard].append(one_epoch(guard, a.steps, a.threads, os.path.join(tmp, guard), a.device_path))
                print(f"round {r + 1} guard {guard}: {rates[guard][-1]:.1f} pairs/s", flush=True)
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    print(f"median pairs/s: guard off {off:.1f}, guard on {on:.1f}; step time on/off = {off / on:.4f} "
          f"({100 * (off / on - 1):+.2f} %)")


if __name__ == "__main__":
    main()
