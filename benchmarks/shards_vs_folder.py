"""The same JPEG set (300-500 px) as an ImageFolder and as WebDataset shards, side by side in one run, through the
torchvision DataLoader (2 workers) and DALI (2 threads): images/s of the two-view pipeline, then one training
epoch end to end with each of the four.

    python benchmarks/shards_vs_folder.py                 # 1,024 images, 112 px views, shards of 256
    python benchmarks/shards_vs_folder.py --images 256 --no-train

Throughput counts images (each gives two views) per second over whole epochs after one warm-up epoch; the
conversion's own time (fastmoco-shards, decode check included) is printed too.
"""
import argparse
import os
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from loaders import loader_rate, make_folder, train_epoch  # noqa: E402
from quality_fmnist import cpu_model  # noqa: E402


def main(argv=None) -> int:
    from fastmoco.data import dali
    from fastmoco.data.shards import convert

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--size", type=int, default=112, help="training view side")
    ap.add_argument("--per-shard", type=int, default=256)
    ap.add_argument("--no-train", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    loaders = ["torch"] + (["dali"] if dali.available() else [])
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(os.path.join(tmp, "folder"), args.images, 300, 500)
        t0 = time.perf_counter()
        convert(folder, os.path.join(tmp, "shards"), max_count=args.per_shard, workers=2, progress=False,
                log=lambda *_: None)
        t_convert = time.perf_counter() - t0
        shards = os.path.join(tmp, "shards")
        mb = sum(os.path.getsize(os.path.join(shards, f)) for f in os.listdir(shards) if f.endswith(".tar")) / 2**20
        print(f"machine: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}")
        print(f"{args.images} JPEGs, 300-500 px ({mb:.0f} MiB in shards of {args.per_shard}); fastmoco-shards took "
              f"{t_convert:.1f} s with 2 workers ({args.images / t_convert:.0f} images/s)\n")
        print("| loader | ImageFolder | shards | shards / folder |")
        print("|---|---|---|---|")
        for loader in loaders:
            f = loader_rate(folder, loader, args.size, 64)
            s = loader_rate(shards, loader, args.size, 64)
            print(f"| {loader}: images/s (two views) | {f:,.0f} | {s:,.0f} | {s / f:.2f}x |", flush=True)
        if args.no_train:
            return 0
        for loader in loaders:
            kw = dict(batch_size=64, preset="v2", bn_splits=1, workers=2)
            f = train_epoch(folder, loader, args.size, os.path.join(tmp, f"f_{loader}"), **kw)
            s = train_epoch(shards, loader, args.size, os.path.join(tmp, f"s_{loader}"), **kw)
            print(f"| {loader}: training epoch, pairs/s (epoch time; run wall) | {f['pairs_per_s']:,.0f} "
                  f"({f['epoch_s']:.1f} s; {f['wall_s']:.0f} s) | {s['pairs_per_s']:,.0f} ({s['epoch_s']:.1f} s; "
                  f"{s['wall_s']:.0f} s) | {s['pairs_per_s'] / f['pairs_per_s']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
