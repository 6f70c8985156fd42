"""Quality benchmark: run `fastmoco-train` (default: no arguments) and record kNN accuracy and wall time.

    python benchmarks/quality_fmnist.py                 # the default 10-minute CPU run
    python benchmarks/quality_fmnist.py --long          # configs/fmnist_long.yaml, the longer CPU config
    python benchmarks/quality_fmnist.py -- --epochs 2   # anything after -- goes to fastmoco-train

Appends one row to the quality table of benchmarks/RESULTS.md (with --record) and prints it.
"""
import argparse
import datetime
import os
import platform
import re
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--long", action="store_true", help="use configs/fmnist_long.yaml")
    p.add_argument("--record", action="store_true", help="append the row to benchmarks/RESULTS.md")
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "quality"))
    p.add_argument("train_args", nargs="*", help="extra fastmoco-train arguments (after --)")
    args = p.parse_args()
    shown = (["--config", "configs/fmnist_long.yaml"] if args.long else []) + list(args.train_args)
    train_args = list(args.train_args)
    if args.long:
        train_args = ["--config", os.path.join(ROOT, "configs", "fmnist_long.yaml")] + train_args
    if not any(a.startswith("--out") for a in train_args):
        train_args += ["--out", args.out]
    cmd = ["fastmoco-train", *train_args]
    print("running:", shlex.join(cmd), flush=True)
    t0 = time.time()
    res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    wall = time.time() - t0
    sys.stdout.write(res.stdout)
    if res.returncode:
        print(f"fastmoco-train failed with exit code {res.returncode}", file=sys.stderr)
        return res.returncode
    match = re.search(r"kNN accuracy \(k=\d+, t=[\d.]+\): ([\d.]+) %", res.stdout)
    knn = float(match.group(1)) if match else float("nan")
    import torch

    row = (f"| {datetime.date.today()} | `{shlex.join(['fastmoco-train', *shown])}` | {knn:.2f} % | "
           f"{wall / 60:.1f} min | {cpu_model()}, {os.cpu_count()} cores | torch {torch.__version__} |")
    print(row)
    if args.record:
        with open(os.path.join(HERE, "RESULTS.md"), "a") as fh:
            fh.write(row + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
