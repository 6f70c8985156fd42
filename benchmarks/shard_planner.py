"""The shard epoch planner at web scale, without files: a synthetic manifest of 10^6 shards x 1,000 samples
(10^9 images) planned for one rank of 64. Prints the time and peak memory of reading the manifest, building the
plan and drawing an epoch's ranges and first batch, and checks that two plans agree.

    python benchmarks/shard_planner.py                  # 10^6 shards, 64 ranks, batch 256 per rank
    python benchmarks/shard_planner.py --shards 100000 --world 8
"""
import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from quality_fmnist import cpu_model  # noqa: E402


def measured(fn):
    """(result, seconds, peak MiB): timed in one call without tracing (tracemalloc slows every allocation
    several-fold: it made the manifest read look 7x slower), the memory traced in a second call."""
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    del out
    tracemalloc.start()
    out = fn()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return out, dt, peak


def main() -> int:
    from fastmoco.data.plan import ShardPlan
    from fastmoco.data.shards import read_manifest
    from fastmoco.data.shards.manifest import FORMAT

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=int, default=10**6)
    p.add_argument("--per-shard", type=int, default=1000)
    p.add_argument("--world", type=int, default=64)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--window", type=int, default=10_000)
    args = p.parse_args()
    cfg = types.SimpleNamespace(batch_size=args.batch, accum_steps=1, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "manifest.json")
        with open(path, "w") as fh:
            json.dump(dict(format=FORMAT, shards=[f"shard-{i:07d}.tar" for i in range(args.shards)],
                           counts=[args.per_shard] * args.shards, classes=None), fh)
        size_mb = os.path.getsize(path) / 2**20
        shards, t_read, m_read = measured(lambda: read_manifest(path))
    rank = args.world - 1
    plan, t_plan, m_plan = measured(lambda: ShardPlan(cfg, shards.counts, rank, args.world, args.window))
    ranges, t_ranges, m_ranges = measured(lambda: plan.ranges(0))
    first, t_first, m_first = measured(lambda: next(iter(plan.plan(0))))
    again = ShardPlan(cfg, shards.counts, rank, args.world, args.window)
    same = all(np.array_equal(a, b) for a, b in zip(ranges, again.ranges(0))) and next(iter(again.plan(0))) == first
    samples = args.shards * args.per_shard
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; numpy {np.__version__}")
    print(f"{args.shards:,} shards x {args.per_shard:,} = {samples:,} samples; rank {rank} of {args.world}, "
          f"batch {args.batch}, window {args.window:,}\n")
    print("| step | time | peak memory (traced) |")
    print("|---|---|---|")
    print(f"| read the manifest ({size_mb:.0f} MiB of JSON, names + counts) | {t_read:.2f} s | {m_read:.0f} MiB |")
    print(f"| build the plan (counts -> steps per rank) | {t_plan * 1e3:.1f} ms | {m_plan:.1f} MiB |")
    print(f"| an epoch's shard ranges for this rank ({len(ranges[0]):,} shards, {int(ranges[2].sum()):,} samples) "
          f"| {t_ranges * 1e3:.0f} ms | {m_ranges:.0f} MiB |")
    print(f"| the epoch's first micro-batch (its shuffle window drawn) | {t_first * 1e3:.0f} ms | {m_first:.1f} MiB |")
    print(f"\nsteps per epoch (every rank): {len(plan):,}; samples left out this epoch: "
          f"{samples - plan.num_samples:,}; two plans identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
