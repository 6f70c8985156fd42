"""Training and evaluation on shards end to end, through both loaders: fastmoco-train --data SHARDS with the kNN
monitor on labelled shards, a resumed epoch that continues with the same batches, a corrupt member replaced and
named, fastmoco-lincls on shards, and unlabelled shards refused for evaluation in one line."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from fastmoco.data import build_data
from fastmoco.data.shards import convert
from fastmoco.train import TrainConfig, train


def _shards(tmp_path, per_class=16, classes=3):
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    for c in range(classes):
        os.makedirs(src / f"class{c}")
        for i in range(per_class):
            a = np.clip(rng.normal(60 + 70 * c, 25, (36, 36, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(src / f"class{c}" / f"{i}.png")
    out = tmp_path / "shards"
    convert(str(src), str(out), max_count=10, workers=1, progress=False)
    return str(out)


def _cfg(data, out, **kw):
    base = dict(data=data, loader="torch", workers=0, batch_size=8, epochs=2, image_size=32, knn_k=5,
                progress=False, out=str(out), shard_shuffle=7)
    return TrainConfig(**{**base, **kw}).resolved()


def _loader(name):
    from fastmoco.data import dali

    if name == "dali" and not dali.available():
        pytest.skip("NVIDIA DALI is not installed")
    return name


@pytest.mark.parametrize("loader", ["torch", "dali"])
def test_a_resumed_epoch_continues_with_the_same_batches(tmp_path, loader):
    data = build_data(_cfg(_shards(tmp_path), tmp_path / "run", loader=_loader(loader)), "cpu")
    assert data.loader == loader and len(data) == 48 // 8
    full = list(data.epoch(1))
    tail = list(data.epoch(1, skip=2 * data.samples_per_step))
    assert len(tail) == len(full) - 2
    for a, b in zip(full[2:], tail):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(full[0], list(data.epoch(0))[0]))  # epochs differ


@pytest.mark.slow
def test_training_on_shards_with_the_knn_monitor_and_lincls(tmp_path):
    from fastmoco.evaluate.lincls import LinclsSettings, run_lincls

    shards = _shards(tmp_path)
    logs = []
    summary = train(_cfg(shards, tmp_path / "run", val=shards, width=8), log=logs.append)
    assert summary["knn_top1"] is not None and summary["steps"] == 2 * 6
    lin = run_lincls(str(tmp_path / "run"), LinclsSettings(protocol="fast", epochs=3, data=shards, val=shards,
                                                           workers=0, progress=False), log=lambda *_: None)
    assert 0 <= lin["top1"] <= 100


@pytest.mark.parametrize("loader", ["torch", "dali"])
def test_a_corrupt_member_is_replaced_and_named_in_the_epochs_warning(tmp_path, loader):
    from fastmoco.data.shards import parse_index

    shards = _shards(tmp_path)
    ref = parse_index(os.path.join(shards, "shard-000000.idx"))[3]
    with open(os.path.join(shards, "shard-000000.tar"), "r+b") as fh:
        fh.seek(ref.image[1])
        fh.write(b"\x00" * 64)  # its PNG signature and header gone
    data = build_data(_cfg(shards, tmp_path / "run", loader=_loader(loader), shard_shuffle=1), "cpu")
    with pytest.warns(UserWarning, match=rf"1 sample\(s\) skipped in epoch 1 .*shard-000000.tar:{ref.key} "
                                         r"\(does not decode"):
        batches = list(data.epoch(0))
    assert len(batches) == len(data) and all(torch.isfinite(v).all() for b in batches for v in b)


def test_unlabelled_shards_cannot_be_evaluated(tmp_path):
    from fastmoco.errors import DataError
    from fastmoco.data.labelled import labelled_set
    from fastmoco.data.shards import convert as to_shards

    _shards(tmp_path, per_class=4)
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"src/class0/{i}.png\n" for i in range(4)))  # no classes
    to_shards(str(lst), str(tmp_path / "plain"), workers=1, progress=False)
    with pytest.raises(DataError, match="these shards hold no classes"):
        labelled_set(str(tmp_path / "plain"))


def _shard_worker(rank, world, port, results, cfg_kw):
    from processes import join_env

    from fastmoco.train.loop import Trainer

    join_env(rank, world, port)
    trainer = Trainer(TrainConfig(**cfg_kw).resolved(), log=lambda *_: None)
    try:
        trainer.fit()
        results[rank] = dict(steps=trainer.pos.step, state={k: v.clone() for k, v in trainer.model.state_dict().items()})
    finally:
        trainer.close()


@pytest.mark.slow
def test_two_ranks_train_on_uneven_shards_in_step(tmp_path):
    from processes import spawn

    shards = _shards(tmp_path)  # 48 samples in shards of 10, 10, 10, 10, 8: no equal split by whole shards
    kw = dict(data=shards, loader="torch", workers=0, batch_size=8, epochs=2, image_size=32, knn_k=5, width=4,
              K=64, progress=False, threads=1, out=str(tmp_path / "run"), shard_shuffle=7)
    res = spawn(_shard_worker, kw)
    assert res[0]["steps"] == res[1]["steps"] == 2 * (48 // 2 // 8)  # every rank the same steps: no hang at the end
    for name, value in res[0]["state"].items():  # one model on both ranks
        assert torch.equal(value, res[1]["state"][name]), name


def test_a_failing_monitor_never_costs_the_epoch(tmp_path, monkeypatch):
    """The checkpoint does not depend on the kNN monitor: a monitor that raises leaves one line and the epoch
    saved (it used to crash between training the epoch and writing it)."""
    from fastmoco.runs import checkpoint as ckpt_io

    def broken(*_, **__):
        raise IndexError("index -1 is out of bounds for dimension 0 with size 10")
    monkeypatch.setattr("fastmoco.train.loop.knn_accuracy", broken)
    shards = _shards(tmp_path, per_class=8)
    logs = []
    summary = train(_cfg(shards, tmp_path / "run", val=shards, width=8, epochs=1), log=logs.append)
    assert summary["epochs"] == 1 and summary["knn_top1"] is None
    assert any(line.startswith("kNN monitor failed, no score this epoch (IndexError: index -1") for line in logs)
    assert ckpt_io.load(str(tmp_path / "run" / "last.pt"))["position"]["epoch"] == 1


def test_a_refusal_inside_a_loader_worker_is_one_line(tmp_path, capsys):
    """A shard whose manifest count exceeds its index, read by a DataLoader worker: the worker's DataError comes
    back wrapped in its traceback; the CLI prints the message alone."""
    import json

    from fastmoco.cli.train import main

    shards = _shards(tmp_path, per_class=8)
    man = json.loads(open(os.path.join(shards, "manifest.json")).read())
    man["counts"][0] = 10**6
    with open(os.path.join(shards, "manifest.json"), "w") as fh:
        json.dump(man, fh)
    rc = main(["--data", shards, "--loader", "torch", "--workers", "1", "--batch-size", "8", "--epochs", "1",
               "--image-size", "32", "--width", "8", "--no-progress", "--out", str(tmp_path / "run"),
               "--shard-shuffle", "1"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "Warning" not in ln]
    assert rc == 2
    assert err[-1].startswith("fastmoco-train: error: shard ") and "the manifest counts 1000000 samples, its index " \
        "lists 10" in err[-1] and "Traceback" not in err[-1]
