"""Input pipelines side by side in one run: the DALI loader against the torchvision DataLoader (the same v2 recipe,
two views per image, 2 threads vs 2 workers), then one training epoch end to end with each.

    python benchmarks/loaders.py               # folders of real-sized JPEGs and of small images, Fashion-MNIST
    python benchmarks/loaders.py --quick       # smaller folders (what benchmarks/test_bench_loaders.py uses)

Throughput counts images (each gives two views) per second over whole epochs after one warm-up epoch.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from fastmoco.data import build_data
from fastmoco.runs.config import FMNIST_DIR
from fastmoco.train import TrainConfig, train


def make_folder(root: str, n: int, lo: int, hi: int, seed: int = 0) -> str:
    """n JPEGs in two classes, sides drawn from [lo, hi] px, photo-like content (smooth colour fields + grain),
    so the files have realistic sizes (quality 90)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        d = os.path.join(root, f"c{i % 2}")
        os.makedirs(d, exist_ok=True)
        w, h = (int(s) for s in rng.integers(lo, hi + 1, 2))
        coarse = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        grain = rng.normal(0, 12, (h, w, 3))
        img = np.clip(np.asarray(coarse, dtype=np.float64) + grain, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(d, f"{i:05d}.jpg"), quality=90)
    return root


def loader_rate(data_dir: str, loader: str, size: int, batch: int, epochs: int = 2, workers: int = 2) -> float:
    """Images per second through ``loader`` (both views made), over ``epochs`` epochs after a warm-up epoch."""
    cfg = TrainConfig(data=data_dir, loader=loader, image_size=size, batch_size=batch, workers=workers,
                      preset="v2", bn_splits=1).resolved()
    data = build_data(cfg, "cpu")
    for _ in data.epoch(0):  # warm-up: worker start, DALI pipeline build, page cache
        pass
    n, t0 = 0, time.perf_counter()
    for e in range(1, epochs + 1):
        for v1, _ in data.epoch(e):
            n += v1.shape[0]
    return n / (time.perf_counter() - t0)


def train_epoch(data_dir: str, loader: str, size: int, out: str, **kw) -> dict:
    """One training epoch with ``loader``: its time (data + step, as the loop's epoch line reports it) and the
    run's whole wall time (start-up, the final kNN monitor and checkpoint included)."""
    cfg = TrainConfig(data=data_dir, loader=loader, image_size=size, epochs=1, out=out, progress=False,
                      overwrite=True, **kw).resolved()
    lines = []
    summary = train(cfg, log=lines.append)
    epoch_line = next(ln for ln in lines if ln.startswith("epoch 1/1"))
    pairs_s = float(epoch_line.split(" pairs/s")[0].split()[-1])
    return dict(pairs_per_s=pairs_s, epoch_s=summary["steps"] * cfg.batch_size / pairs_s, wall_s=summary["wall_s"])


def _row(name, dali_v, torch_v, unit):
    print(f"| {name} | {torch_v:,.0f} {unit} | {dali_v:,.0f} {unit} | {dali_v / torch_v:.2f}x |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small folders, one timed epoch")
    ap.add_argument("--no-train", action="store_true", help="skip the end-to-end training epochs")
    args = ap.parse_args(argv)
    big_n, small_n, epochs = (64, 512, 1) if args.quick else (512, 2048, 2)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        big = make_folder(os.path.join(tmp, "big"), big_n, 300, 500)
        small = make_folder(os.path.join(tmp, "small"), small_n, 32, 48, seed=1)
        print("| input | torchvision DataLoader (2 workers) | DALI (2 threads) | DALI / torch |")
        print("|---|---|---|---|")
        rates = {k: loader_rate(big, k, 224, 32, epochs) for k in ("dali", "torch")}
        _row(f"{big_n} JPEGs 300-500 px -> 2 x 224 px", rates["dali"], rates["torch"], "img/s")
        rates = {k: loader_rate(small, k, 32, 128, epochs) for k in ("dali", "torch")}
        _row(f"{small_n} JPEGs 32-48 px -> 2 x 32 px", rates["dali"], rates["torch"], "img/s")
        if os.path.isdir(FMNIST_DIR):
            rates = {k: loader_rate(FMNIST_DIR, k, 28, 128, 1) for k in ("dali", "torch")}
            print(f"| Fashion-MNIST in memory -> 2 x 28 px (torch = batched tensor augmentation, 1 process) | "
                  f"{rates['torch']:,.0f} img/s | {rates['dali']:,.0f} img/s | {rates['dali'] / rates['torch']:.2f}x |")
        if args.no_train:
            return
        print("\n| one training epoch (default model: ResNet-18 w16, batch 128) | torch loader | DALI loader | "
              "torch / DALI epoch time |")
        print("|---|---|---|---|")
        cases = [(f"{small_n} small JPEGs, 32 px", small, 32, {})]
        if os.path.isdir(FMNIST_DIR):
            cases.append(("Fashion-MNIST, first 12,800 images, default config", FMNIST_DIR, 0,
                          dict(subset=12800)))
        for name, path, size, kw in cases:
            res = {k: train_epoch(path, k, size, os.path.join(tmp, f"run-{k}"), **kw) for k in ("dali", "torch")}
            print(f"| {name} | {res['torch']['epoch_s']:.1f} s ({res['torch']['pairs_per_s']:,.0f} pairs/s) | "
                  f"{res['dali']['epoch_s']:.1f} s ({res['dali']['pairs_per_s']:,.0f} pairs/s) | "
                  f"{res['torch']['epoch_s'] / res['dali']['epoch_s']:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
