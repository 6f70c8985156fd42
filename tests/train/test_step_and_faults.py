"""The compiled step, micro-batch accumulation, and what keeps long runs safe: signals, timed mid-epoch saves, the
run-directory lock, refusing to replace a run, and torchrun restarts after a worker dies."""
import functools
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch._dynamo

from helpers import FMNIST_DIR, needs_fmnist, resolved, tiny
from fastmoco.models import MoCo
from fastmoco.ops.ema import ema_pairs
from fastmoco.train import ConfigError, TrainConfig, train
from fastmoco.runs.directory import RunLock
from fastmoco.models.moco import ema_and_enqueue

pytestmark = [needs_fmnist(), pytest.mark.slow]
B = 32
TINY = tiny(batch_size=B, K=200)



def _ckpt(out):
    return torch.load(os.path.join(out, "last.pt"), weights_only=False)


def test_step_pieces_trace_without_graph_breaks():
    cfg = TrainConfig(width=4, K=64, batch_size=16, bn_splits=4).resolved()
    model = MoCo.from_config(cfg, 1)
    x1, x2 = torch.randn(16, 1, 28, 28), torch.randn(16, 1, 28, 28)
    explained = torch._dynamo.explain(model)(x1, x2)  # query fwd, shuffle, key fwd, fused InfoNCE
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    small = torch.randn(32, 1, 16, 16)  # multi-crop: two small views per image, one more query forward
    explained = torch._dynamo.explain(model)(x1, x2, None, small)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    dst, src = ema_pairs(model.encoder_k, model.encoder_q)
    explained = torch._dynamo.explain(ema_and_enqueue)(dst, src, 0.99, model.queue, model.ptr, torch.randn(16, 128))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.parametrize("extra", [{}, dict(small_crops=2, small_crop_size=16)], ids=["two-views", "multi-crop"])
def test_compiled_step_matches_eager(tmp_path, monkeypatch, extra):
    eager = train(resolved(TINY, tmp_path / "eager", max_steps=3, **extra), log=lambda *_: None)
    # inductor's first compile takes minutes on 2 cores; aot_eager traces the same fullgraph forward + backward
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    compiled = train(resolved(TINY, tmp_path / "compiled", max_steps=3, compile=True, **extra), log=lambda *_: None)
    assert eager["steps"] == compiled["steps"] == 3
    a, b = _ckpt(tmp_path / "eager")["model"], _ckpt(tmp_path / "compiled")["model"]
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-4, rtol=1e-4, msg=name)
    assert b["ptr"].item() == 3 * B


def test_accumulation_updates_key_encoder_and_queue_once_per_optimizer_step(tmp_path, monkeypatch):
    calls = {"ema": 0, "enqueued": [], "forwards": 0}
    real_ema, real_enqueue, real_forward = MoCo.momentum_update, MoCo.enqueue, MoCo.forward

    def ema(self, m=None):
        calls["ema"] += 1
        return real_ema(self, m)

    def enqueue(self, keys):
        calls["enqueued"].append(keys.clone())
        return real_enqueue(self, keys)

    def forward(self, *args):
        calls["forwards"] += 1
        return real_forward(self, *args)

    monkeypatch.setattr(MoCo, "momentum_update", ema)
    monkeypatch.setattr(MoCo, "enqueue", enqueue)
    monkeypatch.setattr(MoCo, "forward", forward)
    train(resolved(TINY, tmp_path, accum_steps=3, max_steps=2), log=lambda *_: None)
    assert calls["forwards"] == 6 and calls["ema"] == 2  # 3 micro-batches per optimizer step
    assert [k.shape[0] for k in calls["enqueued"]] == [3 * B, 3 * B]  # every micro-batch's keys, once
    state = _ckpt(tmp_path)
    assert state["position"]["samples"] == 2 * 3 * B and state["model"]["ptr"].item() == 6 * B
    assert torch.equal(state["model"]["queue"][3 * B:6 * B], calls["enqueued"][1])


def test_save_every_min_writes_mid_epoch_checkpoints(tmp_path):
    train(resolved(TINY, tmp_path, save_every_min=1e-9, max_steps=4, subset=2048), log=lambda *_: None)
    pos = _ckpt(tmp_path)["position"]
    assert (pos["epoch"], pos["samples"], pos["step"]) == (0, 4 * B, 4)
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]  # every write completed by rename


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "fastmoco.train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(path, proc, timeout=120.0):
    end = time.time() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.05)


TINY_ARGS = ["--data", FMNIST_DIR, "--subset", "4096", "--batch-size", "32", "--width", "4",
             "--no-progress", "--threads", "1", "--knn-k", "20", "--epochs", "2"]


@pytest.mark.heavy  # several processes for ~15-20 s: the heavy set (make test-heavy)
def test_sigterm_writes_a_checkpoint_and_exits_with_one_line(tmp_path):
    out = str(tmp_path / "run")
    proc = _cli(*TINY_ARGS, "--K", "200", "--out", out, "--save-every-min", "0.002")  # a mid-epoch save every 0.12 s
    _wait_for(os.path.join(out, "last.pt"), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    lines = [line for line in err.strip().splitlines() if "Warning" not in line and line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fastmoco-train: stopped by SIGTERM at epoch "), err
    assert "continue with --resume auto" in lines[0]
    step = _ckpt(out)["position"]["step"]
    assert f"step {step};" in lines[0]
    res = _cli(*TINY_ARGS, "--K", "200", "--out", out, "--resume", "auto")
    _, err = res.communicate(timeout=300)
    assert res.returncode == 0, err
    assert _ckpt(out)["epoch"] == 2 and _ckpt(out)["position"]["step"] == 2 * (4096 // 32)


def test_second_run_on_a_locked_directory_is_refused(tmp_path):
    lock = RunLock(str(tmp_path))
    try:
        with pytest.raises(ConfigError, match=f"run directory {tmp_path} is in use by another run .pid {os.getpid()}"):
            train(resolved(TINY, tmp_path), log=lambda *_: None)
    finally:
        lock.release()
    assert not (tmp_path / "last.pt").exists()


def test_a_new_run_never_replaces_an_existing_one(tmp_path):
    train(resolved(TINY, tmp_path, max_steps=2), log=lambda *_: None)
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run .* --resume auto, .* --overwrite, or choose another"):
        train(resolved(TINY, tmp_path, max_steps=2), log=lambda *_: None)
    assert (tmp_path / "last.pt").read_bytes() == before
    train(resolved(TINY, tmp_path, max_steps=1, overwrite=True), log=lambda *_: None)
    assert _ckpt(tmp_path)["position"]["step"] == 1


def _worker_pids(tag: str, local_rank: int):
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                env = dict(kv.split(b"=", 1) for kv in fh.read().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if env.get(b"FASTMOCO_TEST_TAG") == tag.encode() and env.get(b"LOCAL_RANK") == str(local_rank).encode():
            pids.append(int(pid))
    return pids


@pytest.mark.heavy  # several processes for ~15-20 s: the heavy set (make test-heavy)
@pytest.mark.parametrize("method", [["--K", "200"], ["--method", "v3", "--warmup-epochs", "0.5", "--mlp-dim", "64"]],
                         ids=["v2", "v3"])
def test_torchrun_restarts_a_killed_worker_and_the_group_resumes(tmp_path, method):
    out = str(tmp_path / "run")
    env = dict(os.environ, FASTMOCO_TEST_TAG=out, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--max-restarts=1",
         "-m", "fastmoco.train", *TINY_ARGS, *method, "--out", out, "--save-every-min", "0.002"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _wait_for(os.path.join(out, "last.pt"), proc)
    victims = _worker_pids(out, 1)
    assert len(victims) == 1, victims
    os.kill(victims[0], signal.SIGKILL)  # rank 1 dies mid-epoch
    stdout, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "resumed from" in stdout, stdout
    final = _ckpt(out)
    assert final["epoch"] == 2 and final["position"]["step"] == 2 * (4096 // 64) and final["world_size"] == 2
    assert len(final["position"]["history"]) == 2

