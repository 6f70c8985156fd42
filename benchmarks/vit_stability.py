"""MoCo v3's ViT stability, measured: precision (fp32 / bf16 autocast / fp16 autocast with a GradScaler) and the
frozen random patch projection against a trained one, on the small ViT and Fashion-MNIST.

    python benchmarks/vit_stability.py --lr 1.5e-2                   # all five runs, one after another
    python benchmarks/vit_stability.py --only fp32-frozen fp32-trained bf16-frozen --amp-steps 30

Every run is `fastmoco-train --method v3 --arch vit_fmnist` with the same seed, data and schedule; only the
precision and the patch projection change. The learning rate is set high on purpose: instability (the loss
jumping back up, the kNN accuracy dipping) is what the stability trick is for, and it shows at large learning
rates first. Per run: the kNN top-1 at the end, the last epoch's mean loss, the largest rise of the loss (its
10-step moving mean above the best moving mean so far, from the per-step losses in TensorBoard), the number of
non-finite steps, pairs/s and the wall time. One markdown row per run.
"""
import argparse
import glob
import json
import math
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from quality_fmnist import cpu_model  # noqa: E402

KNN = re.compile(r"kNN accuracy \(k=\d+, t=[\d.]+\): ([\d.]+) %")
PRECISIONS = {"fp32": ["--no-amp"], "bf16": ["--amp", "--amp-dtype", "bf16"], "fp16": ["--amp", "--amp-dtype", "fp16"]}
PATCH = {"frozen": ["--freeze-patch-embed"], "trained": ["--no-freeze-patch-embed"]}
RUNS = ("fp32-frozen", "fp32-trained", "bf16-frozen", "bf16-trained", "fp16-frozen")
WINDOW = 10  # steps in the moving mean: single noisy batches are not rises


def step_losses(run_dir: str) -> list[float]:
    """The per-step training loss a run wrote to TensorBoard, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    losses = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "tb", "events.*"))):
        acc = EventAccumulator(path, size_guidance={"scalars": 0})
        acc.Reload()
        if "train/loss" in acc.Tags()["scalars"]:
            losses.update({e.step: e.value for e in acc.Scalars("train/loss")})
    return [losses[s] for s in sorted(losses)]


def largest_rise(losses: list[float], window: int = WINDOW) -> float:
    """How far the moving mean of the loss climbed above its best value so far (0 for a loss that only falls)."""
    finite = [x for x in losses if math.isfinite(x)]
    best, rise = math.inf, 0.0
    for i in range(window, len(finite) + 1):
        mean = sum(finite[i - window:i]) / window
        best = min(best, mean)
        rise = max(rise, mean - best)
    return rise


def one(name: str, args, out_root: str) -> dict:
    precision, patch = name.split("-")
    out = os.path.join(out_root, name)
    cap = ["--max-steps", str(args.amp_steps)] if precision != "fp32" and args.amp_steps else []
    cmd = ["fastmoco-train", "--method", "v3", "--arch", "vit_fmnist", "--seed", str(args.seed), "--lr", str(args.lr),
           "--out", out, "--overwrite", "--no-progress", *PRECISIONS[precision], *PATCH[patch], *cap, *args.train_args]
    t0 = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    row = dict(run=name, wall_s=round(wall, 1), args=" ".join(cmd[1:]))
    if done.returncode:  # a diverged run is a result, not a crash of the benchmark
        row["error"] = (done.stderr.strip().splitlines() or ["?"])[-1]
    found = KNN.findall(done.stdout)
    row["knn"] = float(found[-1]) if found else None
    losses = step_losses(out)
    row["losses"] = losses
    row.update(steps=len(losses), nonfinite=sum(not math.isfinite(x) for x in losses),
               last_loss=round(sum(losses[-WINDOW:]) / max(len(losses[-WINDOW:]), 1), 4) if losses else None,
               rise=round(largest_rise(losses), 4))
    with open(os.path.join(out, "metrics.csv")) as fh:
        rows = fh.read().strip().splitlines()[1:]
    row["pairs_per_s"] = float(rows[-1].split(",")[6]) if rows else None
    print(json.dumps({k: v for k, v in row.items() if k != "losses"}), flush=True)
    return row


def gap(a: list[float], b: list[float]) -> float | None:
    """Mean |a - b| of two runs' per-step losses over the steps both have."""
    n = min(len(a), len(b))
    return round(sum(abs(x - y) for x, y in zip(a[:n], b[:n])) / n, 4) if n else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lr", type=float, default=1.5e-2, help="base learning rate (x batch / 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", choices=RUNS)
    p.add_argument("--out", default="runs/vit_stability")
    p.add_argument("--amp-steps", type=int, default=0,
                   help="stop the bf16/fp16 runs after this many steps (autocast is ~8x slower than fp32 on CPUs "
                        "without bf16 units); their losses are compared with the fp32 run of the same patch "
                        "projection over those steps")
    p.add_argument("train_args", nargs="*", help="extra fastmoco-train arguments for every run (after --)")
    args = p.parse_args()
    if not args.train_args:
        args.train_args = ["--subset", "10240", "--epochs", "2", "--warmup-epochs", "0.2"]
    rows = [one(name, args, args.out) for name in (args.only or RUNS)]
    print(f"\nmachine: {cpu_model()}, {os.cpu_count()} cores; shared arguments: `--lr {args.lr} "
          f"{' '.join(args.train_args)}`\n")
    print("| run | kNN top-1 | last loss (10-step mean) | largest rise | non-finite steps | mean abs loss gap to "
          "fp32 | pairs/s | wall time |")
    print("|---|---|---|---|---|---|---|---|")
    fp32 = {r["run"].split("-")[1]: r["losses"] for r in rows if r["run"].startswith("fp32")}
    for r in rows:
        knn = f"{r['knn']:.2f} %" if r["knn"] is not None else f"failed: {r.get('error', '?')}"
        patch = r["run"].split("-")[1]
        g = gap(r["losses"], fp32[patch]) if patch in fp32 and not r["run"].startswith("fp32") else None
        print(f"| {r['run']} | {knn} | {r['last_loss']} | {r['rise']} | {r['nonfinite']} / {r['steps']} | "
              f"{'' if g is None else g} | {r['pairs_per_s']} | {r['wall_s']:.0f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
