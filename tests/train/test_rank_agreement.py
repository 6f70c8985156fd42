"""Processes that disagree stop together with one line: settings and data compared across ranks at start-up, and
an error found on one rank (rank 0's run-directory check, a write that fails) raised on every rank before any
further collective, instead of a hang or a wall of "Connection closed by peer" from the others."""
import os
import subprocess
import sys

import pytest

from helpers import needs_fmnist, tiny
from fastmoco.train import TrainConfig
from fastmoco.train.loop import Trainer

from processes import join_env, spawn

pytestmark = [needs_fmnist(), pytest.mark.slow]
TINY = tiny(subset=256, batch_size=16, K=64, threads=1, knn_k=5)


def _start_worker(rank, world, port, results, per_rank):
    """Builds a Trainer with this rank's settings; records the error it stops with (or None)."""
    join_env(rank, world, port)
    trainer = None
    try:
        trainer = Trainer(TrainConfig(**per_rank[rank]).resolved(), log=lambda *_: None)
        results[rank] = None
    except Exception as exc:  # noqa: BLE001 - the test compares what each rank raised
        results[rank] = f"{type(exc).__name__}: {exc}"
    finally:
        if trainer is not None:
            trainer.close()
        else:
            from fastmoco.runs import distributed
            distributed.teardown()


def _both(tmp_path, first: dict, second: dict) -> dict:
    out = str(tmp_path / "run")
    return spawn(_start_worker, [dict(TINY, out=out, **first), dict(TINY, out=out, **second)])


@pytest.mark.parametrize("name,first,second", [("batch_size", 16, 8), ("subset", 256, 128), ("lr", 0.06, 0.1)])
def test_ranks_started_with_other_settings_stop_with_the_same_line(tmp_path, name, first, second):
    res = _both(tmp_path, {name: first}, {name: second})
    want = (f"ConfigError: the processes disagree on settings: {name} is {first!r} on rank 0 but {second!r} on rank "
            "1; start every process with the same settings")
    assert res == {0: want, 1: want}


def test_ranks_whose_data_differ_stop_with_the_same_line(tmp_path):
    from PIL import Image

    for name, n in (("a", 32), ("b", 48)):  # the paths may differ between nodes; what they hold may not
        for i in range(n):
            (tmp_path / name / "c0").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), (i, 0, 0)).save(tmp_path / name / "c0" / f"{i}.png")
    common = dict(loader="torch", workers=0, image_size=16, subset=0)
    res = _both(tmp_path, dict(common, data=str(tmp_path / "a")), dict(common, data=str(tmp_path / "b")))
    want = "ConfigError: the processes disagree on the training data: images is 32 on rank 0 but 48 on rank 1; " \
           "start every process with the same settings"
    assert res == {0: want, 1: want}


def test_rank_zeros_refusal_of_an_existing_run_stops_every_rank(tmp_path):
    os.makedirs(tmp_path / "run")
    open(tmp_path / "run" / "last.pt", "wb").close()  # a run is there; no --resume, no --overwrite
    res = _both(tmp_path, {}, {})
    assert res[0] == res[1] and res[0].startswith(f"ConfigError: {tmp_path / 'run'} already holds a run"), res


def test_an_error_on_one_rank_alone_is_raised_on_every_rank(tmp_path):
    # one node lacks the data (the paths may differ between nodes): every rank stops with rank 1's line
    res = _both(tmp_path, {}, dict(data=str(tmp_path / "not-mounted")))
    want = f"DataError: rank 1: data path does not exist: {tmp_path / 'not-mounted'}"
    assert res == {0: want, 1: want}


@pytest.mark.heavy  # a real torchrun launch: ~10 s
def test_torchrun_ranks_print_one_line_each_and_no_traceback(tmp_path):
    os.makedirs(tmp_path / "run")
    open(tmp_path / "run" / "last.pt", "wb").close()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "fastmoco.train", "--out", str(tmp_path / "run"), "--subset", "256", "--batch-size", "16", "--width", "4",
           "--no-progress", "--threads", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("fastmoco-train: error:")]
    assert len(lines) == 2 and lines[0] == lines[1] and "already holds a run" in lines[0], res.stderr[-3000:]
    assert "Connection closed by peer" not in res.stderr and "Traceback" not in res.stderr.split(lines[-1])[0], \
        res.stderr[-3000:]
