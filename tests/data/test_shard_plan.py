"""The shard epoch plan: every rank takes the same number of steps whatever the shard sizes (fewer shards than
ranks x workers included), no sample twice in an epoch, the same batches after a resume, a new order each epoch,
and one count per shard of memory at a million shards (figures: benchmarks/shard_planner.py)."""
import types
import tracemalloc

import numpy as np
import pytest

from fastmoco.errors import DataError
from fastmoco.data.plan import ShardPlan


def _cfg(batch=4, accum=1, seed=0):
    return types.SimpleNamespace(batch_size=batch, accum_steps=accum, seed=seed)


def _epoch(counts, world, epoch=0, window=5, **kw):
    plans = [ShardPlan(_cfg(**kw), counts, r, world, window) for r in range(world)]
    return plans, [list(p.plan(epoch)) for p in plans]


@pytest.mark.parametrize("counts, world, accum", [
    ([5, 0, 7, 3, 1], 2, 1),          # uneven, with an empty shard
    ([1000], 4, 1),                    # one shard, four ranks: each reads a quarter of it
    ([3, 50, 2, 9, 1, 1, 30], 3, 2),   # more ranks than big shards, gradient accumulation
    ([7] * 11, 8, 1),                  # fewer shards than 8 ranks x 2 workers
])
def test_every_rank_takes_the_same_steps_and_no_sample_twice(counts, world, accum):
    plans, epochs = _epoch(counts, world, accum=accum)
    steps = {len(e) for e in epochs}
    assert len(steps) == 1 and steps.pop() == len(plans[0]) * accum  # micro-batches per rank, equal everywhere
    refs = [r for e in epochs for _, batch in e for r in batch]
    assert len(refs) == len(set(refs)) == plans[0].num_samples  # at most once, and what an epoch uses
    assert all(0 <= i < counts[s] for s, i in refs)
    assert all(len(batch) == 4 for e in epochs for _, batch in e)
    # the unused remainder is less than one optimizer step's worth per rank plus the rounding of the split
    assert sum(counts) - len(refs) < world * 4 * accum + world


def test_batch_starts_are_the_shared_position_formula():
    plans, epochs = _epoch([40, 24], 2)
    starts = sorted(s for e in epochs for s, _ in e)
    assert starts == list(range(0, plans[0].num_samples, 4))  # rank r's micro-batch at (step*world + r) * batch


def test_resume_mid_epoch_gives_the_same_batches():
    plan = ShardPlan(_cfg(), [13, 8, 21, 5], 1, 2, window=6)
    full = list(plan.plan(3))
    for done_steps in (1, 2, len(plan) - 1):
        assert list(plan.plan(3, skip=done_steps * plan.samples_per_step)) == full[done_steps:]


def test_each_epoch_has_its_own_shard_order_and_shuffle():
    plan = ShardPlan(_cfg(), [10] * 20, 0, 2, window=8)
    e0, e1 = list(plan.plan(0)), list(plan.plan(1))
    assert [b for _, b in e0] != [b for _, b in e1]
    assert list(plan.plan(0)) == e0  # (seed, epoch) alone decide it
    other_seed = ShardPlan(_cfg(seed=1), [10] * 20, 0, 2, window=8)
    assert list(other_seed.plan(0)) != e0


def test_the_window_shuffles_only_inside_windows():
    plan = ShardPlan(_cfg(batch=5), [20, 20], 0, 1, window=10)
    shard_ids, first, length = plan.ranges(0)
    stream = [(int(s), int(f) + k) for s, f, n in zip(shard_ids, first, length) for k in range(n)]
    order = [r for _, b in plan.plan(0) for r in b]
    for w in range(0, len(order), 10):
        assert sorted(order[w:w + 10]) == sorted(stream[w:w + 10])  # window w holds stream samples w..w+9
    assert order != stream  # and shuffles them
    assert [r for _, b in ShardPlan(_cfg(batch=5), [20, 20], 0, 1, window=1).plan(0) for r in b] == stream


def test_too_little_data_is_one_line():
    with pytest.raises(DataError, match=r"only 7 training samples in 2 shard\(s\), fewer than one optimizer step of 8"):
        ShardPlan(_cfg(), [3, 4], 0, 2, window=4)


def test_a_million_shards_plan_in_memory_per_shard_not_per_sample():
    counts = np.full(10**6, 1000, dtype=np.int64)  # 10^9 samples
    tracemalloc.start()
    plan = ShardPlan(_cfg(batch=256), counts, 7, 64, window=10_000)
    shard_ids, first, length = plan.ranges(0)
    first_batch = next(iter(plan.plan(0)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert int(length.sum()) == plan.share and len(shard_ids) <= 10**6 // 64 + 2  # its share: ~1/64 of the shards
    assert len(first_batch[1]) == 256
    assert peak < 120 * 2**20  # a few arrays of one int64 per shard (8 MB each): nothing per sample
    again = ShardPlan(_cfg(batch=256), counts, 7, 64, window=10_000).ranges(0)
    assert all(np.array_equal(a, b) for a, b in zip((shard_ids, first, length), again))
