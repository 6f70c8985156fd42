"""Shards under bad input: a manifest whose counts disagree with the indexes is refused (never an unbounded
walk), an unreadable shard is passed over in one step, each unreadable sample is counted once per epoch,
labelled shards never hand an unreadable sample to evaluation with a made-up label, resuming with another
--accum-steps reads no sample twice, and malformed manifests, interrupted conversions and link loops each get
their one line or their right answer."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from fastmoco.errors import DataError
from fastmoco.data.shards import ShardReader, convert, parse_index, resolve
from fastmoco.data.shards.manifest import ShardSet


def _write(root, per_class=6, classes=2):
    rng = np.random.default_rng(0)
    for c in range(classes):
        os.makedirs(root / f"c{c}")
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")


@pytest.fixture
def small(tmp_path):
    """12 labelled samples in shards of 4."""
    _write(tmp_path / "src")
    out = tmp_path / "out"
    convert(str(tmp_path / "src"), str(out), max_count=4, workers=1, progress=False, log=lambda *_: None)
    return out


def _edit_manifest(out, **changes):
    man = json.loads((out / "manifest.json").read_text())
    man.update(changes)
    (out / "manifest.json").write_text(json.dumps(man))


def test_a_count_beyond_the_index_is_refused_not_walked(small):
    _edit_manifest(small, counts=[4, 10**6, 4])  # hand-edited: shard 1 holds 4
    s = resolve(str(small))
    reader = ShardReader(s.urls, s.counts)
    with pytest.raises(DataError, match=r"shard-000001.tar: the manifest counts 1000000 samples, its index lists 4"):
        reader.read_or_next(1, 500)
    assert reader.read(0, 0)[0].mode == "RGB"  # the other shards read as before


def test_an_unreadable_shard_is_passed_over_in_one_step(small):
    os.remove(small / "shard-000001.tar")
    os.remove(small / "shard-000001.idx")
    _edit_manifest(small, counts=[4, 10**6, 4])  # a missing shard: its count cannot be checked, nor walked
    s = resolve(str(small))
    reader = ShardReader(s.urls, s.counts)
    calls = []

    def read(shard, i):
        calls.append((shard, i))
        return reader.read(shard, i)
    img, label, skipped = reader.read_or_next(1, 17, read)
    assert calls == [(1, 17), (2, 0)]  # one try in the missing shard, then the next shard's first sample
    assert len(skipped) == 1 and "shard-000001.tar:sample 17 (" in skipped[0]


def test_each_unreadable_sample_is_counted_once_per_epoch(small, tmp_path):
    from fastmoco.data import build_data
    from fastmoco.train import TrainConfig

    refs = parse_index(str(small / "shard-000001.idx"))
    with open(small / "shard-000001.tar", "r+b") as fh:
        fh.truncate(refs[1].image[1] + 4)  # samples 1, 2, 3 of shard 1 cut off: 3 unreadable samples in a row
    cfg = TrainConfig(data=str(small), loader="torch", workers=0, batch_size=4, epochs=1, image_size=8,
                      progress=False, out=str(tmp_path / "run"), shard_shuffle=1).resolved()
    data = build_data(cfg, "cpu")
    assert data.num_samples == 12  # every sample is read once this epoch
    with pytest.warns(UserWarning, match=r": 3 sample\(s\) skipped in epoch 1 and replaced"):
        list(data.epoch(0))


def test_labelled_shards_leave_unreadable_samples_out_of_evaluation(small):
    from fastmoco.data.shard_source import ShardImages

    os.remove(small / "shard-000001.tar")  # 4 samples whose class cannot be read
    os.remove(small / "shard-000001.idx")
    refs = parse_index(str(small / "shard-000002.idx"))
    with open(small / "shard-000002.tar", "r+b") as fh:  # an image that no longer decodes, its class intact
        fh.seek(refs[0].image[1])
        fh.write(b"\x00" * 32)
    ds = ShardImages(resolve(str(small)), transform=lambda im: torch.zeros(1))
    assert len(ds) == len(ds.targets) == 8 and min(ds.targets) >= 0
    assert "4 sample(s) left out of evaluation" in ds.note and "shard-000001.tar" in ds.note
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    _, labels, replaced = next(iter(loader))
    k = ds.items.index((2, 0))
    assert replaced[k].startswith(f"shard-000002.tar:{refs[0].key} (does not decode")
    assert labels[k] == ds.targets[k + 1]  # the stand-in brings its own class, never -1


def test_a_subset_larger_than_the_set_takes_all_of_it(small):
    s = resolve(str(small))
    assert s.first(10**6) is s and s.first(12) is s
    part = s.first(6)
    assert part.counts.tolist() == [4, 2] and len(part.urls) == 2


@pytest.mark.parametrize("counts, said", [
    ([4, None, 4], r"shard-000001.tar's sample count is None, not a whole number"),
    ([4, "twenty", 4], r"shard-000001.tar's sample count is 'twenty', not a whole number"),
    ([4, 2.5, 4], r"shard-000001.tar's sample count is 2.5, not a whole number"),
    ([4, -1, 4], r"negative sample count for shard shard-000001.tar"),
])
def test_malformed_counts_are_one_line_naming_the_shard(small, counts, said):
    _edit_manifest(small, counts=counts)
    with pytest.raises(DataError, match=said):
        resolve(str(small))


def test_an_interrupted_conversion_says_the_manifest_is_missing(small):
    from fastmoco.data import build_data
    from fastmoco.train import TrainConfig

    os.remove(small / "manifest.json")  # what an interrupted fastmoco-shards leaves: plan.json, shards, no manifest
    cfg = TrainConfig(data=str(small), loader="torch", workers=0, batch_size=4, epochs=1, progress=False,
                      out=str(small.parent / "run")).resolved()
    with pytest.raises(DataError, match=r"holds no manifest.json: fastmoco-shards writes it last, so its conversion "
                                        r"into this folder did not finish; run the same command again"):
        build_data(cfg, "cpu")


def test_unlabelled_training_shards_say_why_the_monitor_is_off(tmp_path):
    from fastmoco.data import build_data
    from fastmoco.train import TrainConfig

    _write(tmp_path / "src")
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"src/c0/{i}.png\n" for i in range(6)))
    convert(str(lst), str(tmp_path / "plain"), workers=1, progress=False, log=lambda *_: None)
    cfg = TrainConfig(data=str(tmp_path / "plain"), val=str(tmp_path / "src"), loader="torch", workers=0,
                      batch_size=2, epochs=1, progress=False, out=str(tmp_path / "run")).resolved()
    data = build_data(cfg, "cpu")
    assert data.knn_sets() is None
    line = data.monitor_off()
    assert "hold no classes (.cls members)" in line and "--val alone cannot score" in line and "pass --val" not in line


def test_link_loops_list_each_image_once_with_its_own_class(tmp_path):
    """A folder linking up to the root and another linking across: 12 images, not hundreds, and c1's images
    keep class c1 although c0's walk reaches them first (the converter and the folder loader agree)."""
    from fastmoco.data.folder import image_folder
    from fastmoco.data.shards.writer import list_source

    _write(tmp_path / "src")
    os.symlink("..", tmp_path / "src" / "c0" / "up")
    os.symlink("../c0", tmp_path / "src" / "c1" / "across")
    items, classes = list_source(str(tmp_path / "src"))
    ds = image_folder(str(tmp_path / "src"))
    for listed in (items, ds.samples):
        assert len(listed) == 12
        assert all(os.path.basename(os.path.dirname(os.path.realpath(p))) == f"c{c}" for p, c in listed)
    out = convert(str(tmp_path / "src"), str(tmp_path / "out"), workers=1, progress=False, log=lambda *_: None)
    assert out["samples"] == 12


def test_resuming_with_other_accum_steps_reads_no_sample_twice():
    import types

    from fastmoco.data.plan import ShardPlan

    counts = [13, 8, 21, 5, 9]

    def plan(accum):
        return ShardPlan(types.SimpleNamespace(batch_size=3, accum_steps=accum, seed=0), counts, 0, 1, window=7)
    before, after = plan(1), plan(2)
    done = 5 * before.samples_per_step  # 5 steps of batch 3, then resumed with two micro-batches per step
    first = [r for _, b in list(before.plan(0))[:5] for r in b]
    rest = [r for _, b in after.plan(0, skip=done) for r in b]
    assert len(set(first + rest)) == len(first + rest)  # every sample at most once in the epoch
    assert len(first) + len(rest) > 0.8 * sum(counts)
    starts = [s for s, _ in after.plan(0, skip=done)]
    assert starts[0] == done  # the batch seeds continue from the samples done, as the folder plan's do
    assert ShardSet(list("ab"), np.array([1, 2]), None, "/").first(3).samples == 3
