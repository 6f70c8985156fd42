"""The epoch plan every source shares: which samples each rank's micro-batches take, in which order, and the
augmentation seed of each micro-batch.

One shuffled order per (seed, epoch), identical on every rank; an optimizer step takes ``batch * world * accum``
consecutive samples of it, micro-batch j of rank r the slice at ``(j * world + r) * batch``; every micro-batch's
augmentation draws from its position in that order (``batch_seed``), so a run resumed anywhere, even mid-epoch or
with another process count, sees the same batches as the uninterrupted run. In-memory data and ImageFolders plan
over sample indices (``EpochPlan``); sharded data plans over shards (``shards.ShardPlan``, built on the same
seeds and step arithmetic).
"""
import numpy as np
import torch

from fastmoco.errors import DataError


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def batch_seed(seed: int, epoch: int, start: int) -> int:
    """The augmentation seed of the micro-batch that starts at position ``start`` of the epoch's order: draws
    depend on where a batch sits in the epoch, not on how the loop got there (resume, process count)."""
    return ((seed * 100_003 + epoch) * 1_000_003 + start) % (1 << 62)


class EpochPlan:
    """The epoch plan shared by every source: one shuffled order per (seed, epoch), identical on every rank;
    an optimizer step takes ``batch * world * accum`` consecutive samples of it, micro-batch j of rank r the
    slice at ``(j * world + r) * batch``. Across ranks every image appears exactly once per epoch (the last
    partial step is dropped: Split-BN and shuffle-BN need full, equal batches)."""

    def __init__(self, cfg, num_samples: int, rank: int, world: int):
        self.batch_size, self.seed, self.rank, self.world = cfg.batch_size, cfg.seed, rank, world
        self.accum, self.num_samples = cfg.accum_steps, num_samples
        self.samples_per_step = cfg.batch_size * world * cfg.accum_steps
        if num_samples < self.samples_per_step:
            raise DataError(f"only {num_samples} training images, fewer than one optimizer step of "
                            f"{self.samples_per_step} (batch {cfg.batch_size} x {world} process(es) x "
                            f"{cfg.accum_steps} micro-batch(es))")

    def __len__(self):
        """Optimizer steps in a full epoch."""
        return self.num_samples // self.samples_per_step

    def steps(self, skip: int = 0) -> int:
        """Optimizer steps left in an epoch once ``skip`` of its samples are done."""
        return (self.num_samples - skip) // self.samples_per_step

    def plan(self, epoch: int, skip: int = 0, device=None):
        """(start position, sample indices) of this rank's micro-batches, from sample ``skip`` of the epoch; the
        indices on ``device`` (one copy per epoch, not one per batch)."""
        order = torch.randperm(self.num_samples, generator=epoch_generator(self.seed, epoch)).to(device)
        for s in range(self.steps(skip)):
            for j in range(self.accum):
                start = skip + s * self.samples_per_step + (j * self.world + self.rank) * self.batch_size
                yield start, order[start:start + self.batch_size]


class ShardPlan:
    """The epoch plan of sharded data, on the same step arithmetic and batch seeds as ``EpochPlan``.

    Per (seed, epoch) the shards are put in a random order; the concatenation of their samples is cut into
    ``world`` equal slices at sample granularity (a shard may straddle two ranks), so every rank holds the same
    number of samples whatever the shard sizes, and any shard count works, fewer shards than ranks x workers
    included. Each rank takes the same number of optimizer steps, ``(samples // world) // (batch * accum)``; what
    does not fill a step is left out this epoch (under one shard per rank, a different part each epoch: the shard
    order changes). Inside its slice a rank shuffles in windows of ``window`` consecutive samples (a shuffle buffer
    whose order is drawn from (seed, epoch, rank, window), so it needs no data to replay): reads stay sequential
    within a window, and a resume at any step rebuilds the same batches. The windows tile the rank's whole share,
    whatever the step size, and the rank reads its stream from ``skip / world`` on: a run resumed with another
    ``--accum-steps`` continues the same stream, so every sample is still seen at most once per epoch. Holds one
    count per shard, no per-sample data.
    """

    def __init__(self, cfg, counts, rank: int, world: int, window: int):
        self.batch_size, self.seed, self.rank, self.world = cfg.batch_size, cfg.seed, rank, world
        self.accum, self.window = cfg.accum_steps, max(1, window)
        self.counts = np.asarray(counts, dtype=np.int64)  # (S,)
        total = int(self.counts.sum())
        self.samples_per_step = cfg.batch_size * world * cfg.accum_steps
        self.share = total // world  # this many samples of the shuffled concatenation belong to each rank
        steps = self.share // (cfg.batch_size * cfg.accum_steps)
        if steps == 0:
            raise DataError(f"only {total} training samples in {len(self.counts)} shard(s), fewer than one optimizer "
                            f"step of {self.samples_per_step} (batch {cfg.batch_size} x {world} process(es) x "
                            f"{cfg.accum_steps} micro-batch(es))")
        self.num_samples = steps * self.samples_per_step  # what an epoch uses, over all ranks
        self.take = steps * cfg.batch_size * cfg.accum_steps  # what it uses of each rank's share

    def __len__(self):
        return self.num_samples // self.samples_per_step

    def steps(self, skip: int = 0) -> int:
        """Optimizer steps left once ``skip`` samples of the epoch (over all ranks) are done."""
        return (self.take - skip // self.world) // (self.batch_size * self.accum)

    def ranges(self, epoch: int, rank: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shard ids, first sample, sample count) of the shard ranges of ``rank``'s (default: this one's) share of
        ``epoch``, in stream order; together they hold ``share`` samples, of which the rank reads ``take``."""
        rank = self.rank if rank is None else rank
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.counts))  # (S,) the shard order
        c = self.counts[order]
        ends = np.cumsum(c)  # (S,) end of each shard in the concatenation
        starts = ends - c
        lo, hi = rank * self.share, (rank + 1) * self.share
        a, b = int(np.searchsorted(ends, lo, side="right")), int(np.searchsorted(starts, hi, side="left"))
        first = np.maximum(lo - starts[a:b], 0)  # (k,)
        last = np.minimum(hi - starts[a:b], c[a:b])
        keep = last > first  # empty shards hold nothing to read
        return order[a:b][keep], first[keep], (last - first)[keep]

    def window_order(self, epoch: int, w: int, size: int) -> np.ndarray:
        """The shuffle of window ``w`` (``size`` samples) of this rank's stream."""
        rng = np.random.default_rng([self.seed, epoch, self.rank, w])
        return rng.permutation(size)

    def plan(self, epoch: int, skip: int = 0):
        """(start position, [(shard, sample), ...]) of this rank's micro-batches, from global sample ``skip`` of
        the epoch on (``skip`` counts whole optimizer steps of the run that saved it: every rank has read
        ``skip / world`` samples of its stream)."""
        shard_ids, first, length = self.ranges(epoch)
        stream_end = np.cumsum(length)  # (k,) end of each range in this rank's stream
        stream_start = stream_end - length
        q0 = skip // self.world  # where this rank's stream continues
        cached = (-1, None)
        for s in range(self.steps(skip)):
            for j in range(self.accum):
                refs = []
                lo = q0 + (s * self.accum + j) * self.batch_size
                for q in range(lo, lo + self.batch_size):
                    w = q // self.window
                    if cached[0] != w:
                        size = min(self.window, self.share - w * self.window)
                        cached = (w, self.window_order(epoch, w, size))
                    p = w * self.window + int(cached[1][q - w * self.window])  # position in the rank's stream
                    k = int(np.searchsorted(stream_end, p, side="right"))
                    refs.append((int(shard_ids[k]), int(first[k] + p - stream_start[k])))
                start = skip + s * self.samples_per_step + (j * self.world + self.rank) * self.batch_size
                yield start, refs
