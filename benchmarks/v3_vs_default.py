"""MoCo v3 (preset fmnist-v3) against the default v2-style recipe on Fashion-MNIST, at equal wall time.

    python benchmarks/v3_vs_default.py --seeds 0 1 2 --v3-epochs 4
    python benchmarks/v3_vs_default.py --seeds 0 --only v3 -- --T 0.1    # extra fastmoco-train arguments for v3
    python benchmarks/v3_vs_default.py --label vit_fmnist --v3-epochs 1 -- --arch vit_fmnist --subset 30000

For each seed, one after another (never two runs at once: on 2 cores they slow each other 10x): the default
`fastmoco-train`, then `fastmoco-train --method v3 --epochs E`, each followed by the fast linear protocol
(`fastmoco-lincls`). Prints one markdown row per run (kNN top-1, fast linear top-1, training wall time) and the
means; pick E so that the v3 runs' wall time matches the default's.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from quality_fmnist import cpu_model  # noqa: E402

KNN = re.compile(r"kNN accuracy \(k=\d+, t=[\d.]+\): ([\d.]+) %")
TOP1 = re.compile(r"top-1 ([\d.]+) %")


def run(cmd: list[str]) -> tuple[str, float]:
    t0 = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout, time.time() - t0


def one(name: str, seed: int, train_args: list[str], out_root: str) -> dict:
    out = os.path.join(out_root, f"{name}_s{seed}")
    log, wall = run(["fastmoco-train", "--seed", str(seed), "--out", out, "--overwrite", "--no-progress",
                     *train_args])
    knn = float(KNN.findall(log)[-1])
    lin_log, lin_wall = run(["fastmoco-lincls", out, "--no-progress", "--seed", str(seed)])
    top1 = float(TOP1.findall(lin_log)[-1])
    row = dict(method=name, seed=seed, knn=knn, linear=top1, train_s=round(wall, 1), lincls_s=round(lin_wall, 1),
               args=" ".join(train_args))
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--v3-epochs", type=int, default=4)
    p.add_argument("--only", choices=["default", "v3"])
    p.add_argument("--label", default="v3", help="the v3 runs' name in the table and their run directories")
    p.add_argument("--out", default="runs/v3_vs_default")
    p.add_argument("v3_args", nargs="*", help="extra fastmoco-train arguments for the v3 runs (after --)")
    args = p.parse_args()
    rows = []
    for seed in args.seeds:
        if args.only != "v3":
            rows.append(one("default", seed, [], args.out))
        if args.only != "default":
            rows.append(one(args.label, seed, ["--method", "v3", "--epochs", str(args.v3_epochs), *args.v3_args],
                            args.out))
    print(f"\nmachine: {cpu_model()}, {os.cpu_count()} cores\n")
    print("| method | seed | kNN top-1 | fast linear top-1 | training wall time | arguments |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['seed']} | {r['knn']:.2f} % | {r['linear']:.2f} % | {r['train_s']:.0f} s | "
              f"`{r['args']}` |")
    for name in ("default", args.label):
        mine = [r for r in rows if r["method"] == name]
        if mine:
            sd = (lambda xs: f" ({statistics.stdev(xs):.2f})" if len(xs) > 1 else "")
            knn, lin = [r["knn"] for r in mine], [r["linear"] for r in mine]
            print(f"| **{name} mean** | | **{statistics.mean(knn):.2f} %{sd(knn)}** | **{statistics.mean(lin):.2f} %"
                  f"{sd(lin)}** | {statistics.mean(r['train_s'] for r in mine):.0f} s | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
