"""MoCo v3 through the trainer: resume mid-epoch, compile, accumulation, two gloo ranks, both loaders, export,
the per-step momentum, and the settings it refuses."""
import functools
import os
import subprocess
import sys

import pytest
import torch

from helpers import needs_fmnist, resolved, tiny
from fastmoco.data import dali
from fastmoco.models import MoCoV3
from fastmoco.train import ConfigError, TrainConfig, train
from fastmoco.train.loop import Trainer
from fastmoco.train.schedules import momentum_at

from processes import join_env, spawn

pytestmark = [needs_fmnist(), pytest.mark.slow]
B = 32
TINY = tiny(method="v3", batch_size=B, mlp_dim=64, epochs=2, warmup_epochs=0.5)



def _ckpt(out):
    return torch.load(os.path.join(out, "last.pt"), weights_only=False)


def test_resume_mid_epoch_reproduces_the_uninterrupted_v3_run(tmp_path):
    train(resolved(TINY, tmp_path / "full"), log=lambda *_: None)
    cut = tmp_path / "cut"
    train(resolved(TINY, cut, max_steps=41), log=lambda *_: None)  # 32 steps an epoch: 9 into the second
    assert _ckpt(cut)["position"]["samples"] == 9 * B
    train(resolved(TINY, cut, resume="auto"), log=lambda *_: None)
    a, b = _ckpt(tmp_path / "full"), _ckpt(cut)
    assert a["position"]["step"] == b["position"]["step"] == 64
    for key, value in a["model"].items():  # projector, predictor and momentum encoder included
        assert torch.equal(value, b["model"][key]), key
    assert a["config"]["optimizer"] == "lars" and a["config"]["m_schedule"] == "cosine"


def test_the_trainer_takes_the_cosine_momentum_every_step(tmp_path, monkeypatch):
    seen = []
    real = MoCoV3.after_step
    monkeypatch.setattr(MoCoV3, "after_step", lambda self, keys, m: (seen.append(m), real(self, keys, m)))
    train(resolved(TINY, tmp_path, epochs=1), log=lambda *_: None)
    steps = 1024 // B
    assert len(seen) == steps
    assert seen == [momentum_at(i / steps, 1, 0.99, "cosine") for i in range(steps)]
    assert seen[0] == 0.99 and all(a < b for a, b in zip(seen, seen[1:]))


def test_compiled_v3_step_matches_eager(tmp_path, monkeypatch):
    train(resolved(TINY, tmp_path / "eager", max_steps=3), log=lambda *_: None)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    train(resolved(TINY, tmp_path / "compiled", max_steps=3, compile=True), log=lambda *_: None)
    a, b = _ckpt(tmp_path / "eager")["model"], _ckpt(tmp_path / "compiled")["model"]
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-4, rtol=1e-4, msg=name)


def test_accumulation_runs_the_ema_once_per_optimizer_step(tmp_path, monkeypatch):
    calls = {"ema": 0, "forwards": 0}
    real_after, real_forward = MoCoV3.after_step, MoCoV3.forward

    def after(self, keys, m):
        calls["ema"] += 1
        assert keys is None
        return real_after(self, keys, m)

    def forward(self, *args):
        calls["forwards"] += 1
        return real_forward(self, *args)

    monkeypatch.setattr(MoCoV3, "after_step", after)
    monkeypatch.setattr(MoCoV3, "forward", forward)
    train(resolved(TINY, tmp_path, accum_steps=2, max_steps=3), log=lambda *_: None)
    assert calls == {"ema": 3, "forwards": 6}
    assert _ckpt(tmp_path)["position"]["samples"] == 3 * 2 * B


def _v3_worker(rank, world, port, results, cfg_kw):
    join_env(rank, world, port)
    trainer = Trainer(TrainConfig(**cfg_kw).resolved(), log=lambda *_: None)
    try:
        trainer.fit()
        results[rank] = dict(state={k: v.clone() for k, v in trainer.model.state_dict().items()},
                             steps=trainer.pos.step, sync_bn=trainer.cfg.sync_bn, splits=trainer.cfg.bn_splits)
    finally:
        trainer.close()


@pytest.mark.parametrize("arch", [{}, dict(arch="vit_fmnist", image_size=28)], ids=["resnet", "vit"])
def test_two_gloo_ranks_train_v3_and_stay_identical(tmp_path, arch):
    res = spawn(_v3_worker, dict(TINY, out=str(tmp_path), max_steps=3, threads=1, **arch))
    a, b = res[0], res[1]
    assert a["steps"] == b["steps"] == 3
    assert (a["sync_bn"], a["splits"]) == (False, 1)  # gloo: per-rank BN, statistics averaged after each step
    for name, value in a["state"].items():
        assert torch.equal(value, b["state"][name]), name


@pytest.mark.parametrize("loader", ["torch", pytest.param("dali", marks=pytest.mark.skipif(
    not dali.available(), reason="NVIDIA DALI is not installed"))])
def test_v3_trains_on_a_folder_with_both_loaders_and_exports(tmp_path, loader, no_hang):
    from PIL import Image

    root = tmp_path / "data"
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(16):
            Image.new("RGB", (40, 36), (20 * i, 100 * c, 7 * i)).save(root / f"c{c}" / f"{i}.png")
    out = tmp_path / "run"
    summary = train(TrainConfig(data=str(root), val=str(root), method="v3", batch_size=8, width=4, mlp_dim=32,
                                epochs=2, warmup_epochs=0.5, loader=loader, workers=1, progress=False, knn_k=5,
                                out=str(out)).resolved(), log=lambda *_: None)
    assert summary["knn_top1"] is not None
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    done = subprocess.run([sys.executable, "-m", "fastmoco.cli.export", str(out)], capture_output=True, text=True,
                          env=env)
    assert done.returncode == 0, done.stderr
    assert (out / "export" / "features.pt2").is_file()


@pytest.mark.parametrize("args, message", [
    (["--method", "v3", "--small-crops", "2"], "multi-crop (--small-crops) is a v1/v2 option"),
    (["--method", "queue", "--preset", "v3"], "preset v3 is a recipe of method v3, not queue"),
    (["--method", "v3", "--sync-bn"], "sync_bn needs CUDA devices (SyncBatchNorm has no CPU kernel); on CPU v3"),
    (["--method", "v3", "--epochs", "1", "--warmup-epochs", "2"], "warmup_epochs 2 must be less than epochs 1"),
    (["--method", "v4"], "argument --method: invalid choice: 'v4'"),
    (["--preset", "v3", "--head", "mlp"], "method v3 trains its own projector"),
])
def test_v3_settings_it_refuses_are_one_line(tmp_path, args, message):
    done = subprocess.run([sys.executable, "-m", "fastmoco.cli.train", "--out", str(tmp_path / "r"), *args],
                          capture_output=True, text=True)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr


def test_presets_fill_the_v3_recipe():
    cfg = TrainConfig(preset="v3", epochs=100).resolved()
    assert (cfg.method, cfg.T, cfg.m, cfg.m_schedule, cfg.optimizer, cfg.lr, cfg.lr_ref_batch, cfg.weight_decay,
            cfg.warmup_epochs, cfg.dim, cfg.mlp_dim, cfg.crop_min_scale, cfg.aug) == (
        "v3", 1.0, 0.99, "cosine", "lars", 0.6, 256, 1e-6, 10.0, 256, 4096, 0.2, "v3")
    assert cfg.lr_for(8) == pytest.approx(0.6 * 128 * 8 / 256)
    small = TrainConfig(method="v3").resolved()
    assert (small.preset, small.epochs, small.T, small.lr, small.mlp_dim) == ("fmnist-v3", 4, 0.2, 9.6, 1024)
    assert TrainConfig().resolved().method == "queue"
    one, ddp = (TrainConfig(preset="v3", epochs=20).resolved().for_runtime("cpu", w) for w in (1, 2))
    assert (one.sync_bn, one.bn_splits, ddp.sync_bn, ddp.bn_splits) == (False, 1, False, 1)
    gpus = TrainConfig(preset="v3").resolved().for_runtime("cuda", 8)  # the original: SyncBN under DDP on GPUs
    assert (gpus.sync_bn, gpus.bn_splits) == (True, 1)
    assert TrainConfig().resolved().for_runtime("cuda", 8).sync_bn is False  # v1/v2 keep shuffle-BN
    with pytest.raises(ConfigError, match="sync_bn needs CUDA"):
        TrainConfig(preset="v3", epochs=20, sync_bn=True).resolved().for_runtime("cpu", 2)
