"""Tiny end-to-end runs on a Fashion-MNIST subset (a few seconds each on 2 CPU cores)."""
import os
import subprocess
import sys

import pytest
import torch

from helpers import FMNIST_DIR, needs_fmnist, resolved, tiny
from fastmoco.train import TrainingDiverged, train
from fastmoco.runs.checkpoint import CheckpointError

pytestmark = [needs_fmnist(), pytest.mark.slow]
TINY = tiny(subset=2048, batch_size=64, width=8, K=256, epochs=2, knn_k=200)



def test_two_epochs_loss_falls_and_outputs_written(tmp_path):
    summary = train(resolved(TINY, tmp_path, epochs=3, K=128), log=lambda *_: None)
    rows = open(tmp_path / "metrics.csv").read().strip().splitlines()
    assert len(rows) == 4  # header + one row per epoch
    losses = [float(r.split(",")[2]) for r in rows[1:]]
    assert losses[-1] < losses[1], losses  # after the first epoch the queue holds real keys only
    assert 10.0 < summary["knn_top1"] <= 100.0
    for name in ("config.yaml", "last.pt", "curves.png"):
        assert (tmp_path / name).is_file()
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tb"))


@pytest.mark.parametrize("cut_at", [2048 // 64, 2048 // 64 + 5], ids=["epoch-end", "mid-epoch"])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, cut_at):
    full = tmp_path / "full"
    train(resolved(TINY, full), log=lambda *_: None)
    cut = tmp_path / "cut"
    train(resolved(TINY, cut, max_steps=cut_at), log=lambda *_: None)
    pos = torch.load(cut / "last.pt", weights_only=False)["position"]
    assert (pos["epoch"], pos["samples"], pos["step"]) == divmod(cut_at, 32)[:1] + ((cut_at % 32) * 64, cut_at)
    train(resolved(TINY, cut, resume="auto"), log=lambda *_: None)
    a = torch.load(full / "last.pt", weights_only=False)
    b = torch.load(cut / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2 and a["position"]["step"] == b["position"]["step"] == 64
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key  # queue and ptr included
    assert a["position"]["history"][-1]["loss"] == b["position"]["history"][-1]["loss"]


# guard off: the first non-finite loss stops the run; guard on: every step is skipped, three rollbacks each
# meet NaN again, and the fourth is refused
NAN_STOPS = {"off": "loss became nan at epoch 2, step 33; stopped, last good",
             "on": r"step 44: 1 step\(s\) with a non-finite loss or gradients skipped; 3 of the last 3 checks flagged: a "
                   r"rollback beyond the 3 that --guard-max-recoveries allows; stopped, last good checkpoint kept"}


@pytest.mark.parametrize("guard", ["off", "on"])
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, guard):
    out = tmp_path / "nan"
    train(resolved(TINY, out, epochs=1), log=lambda *_: None)
    good = (out / "last.pt").read_bytes()
    from fastmoco.models import MoCo

    real_forward = MoCo.forward

    def poisoned(self, a, b, *rest):
        loss, keys = real_forward(self, a, b, *rest)
        return loss * float("nan"), keys

    monkeypatch.setattr(MoCo, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match=NAN_STOPS[guard]):
        train(resolved(TINY, out, epochs=2, resume="auto", guard=guard), log=lambda *_: None)
    assert (out / "last.pt").read_bytes() == good


def test_corrupt_checkpoint_on_resume(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        train(resolved(TINY, tmp_path, resume="auto"), log=lambda *_: None)


def test_export_round_trip(tmp_path):
    train(resolved(TINY, tmp_path, epochs=1, subset=512), log=lambda *_: None)
    out = subprocess.run([sys.executable, "-m", "fastmoco.cli.export", str(tmp_path)], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [str(tmp_path / "export" / "backbone.pt"), str(tmp_path / "export" / "features.pt2")]
    program = torch.export.load(out[1]).module()
    sd = torch.load(out[0])
    from fastmoco.data import load_fmnist
    from fastmoco.data.transforms import FMNIST_MEAN, FMNIST_STD
    from fastmoco.models import build_backbone

    cfg = resolved(TINY, tmp_path)
    net = build_backbone(cfg.arch, cfg.width, cfg.stem, 1)
    net.load_state_dict(sd)
    net.eval()
    images = load_fmnist(FMNIST_DIR, train=False)[0][:5].float() / 255.0  # as the dataset stores them
    size = cfg.image_size or images.shape[-1]  # the training size: the program resamples every input to it
    for n in (1, 5):  # dynamic batch size
        feats = program(images[:n])
        with torch.no_grad():
            x = torch.nn.functional.interpolate(images[:n], size=(size, size), mode="bilinear", align_corners=False)
            expect = net((x - FMNIST_MEAN[0]) / FMNIST_STD[0])
        assert feats.shape == (n, 64)
        torch.testing.assert_close(feats, expect, atol=1e-5, rtol=1e-5)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fastmoco.train", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args,message", [
    (["--lr", "0"], "fastmoco-train: error: lr must be > 0, got 0.0"),
    (["--arch", "alexnet"], "fastmoco-train: error: unknown arch 'alexnet'"),
    (["--data", "/nonexistent"], "fastmoco-train: error: data path does not exist: /nonexistent"),
    (["--resume", "/nonexistent.pt"], "fastmoco-train: error: --resume: checkpoint not found: /nonexistent.pt"),
])
def test_cli_errors_are_one_line(args, message, capsys):
    from fastmoco.cli import train as train_cli  # in-process; the process itself: test_the_process_exits_2_...

    assert train_cli.main([*args, "--out", "/tmp/fastmoco-cli-test"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == message or err.startswith(message)
    assert len(err.splitlines()) == 1, err


def test_the_process_exits_2_with_one_line():
    res = _cli("--lr", "0", "--out", "/tmp/fastmoco-cli-test")
    assert res.returncode == 2 and res.stderr.strip() == "fastmoco-train: error: lr must be > 0, got 0.0", res.stderr


@pytest.mark.parametrize("loader", ["dali", "torch"])
def test_cli_image_folder_run_with_val(tmp_path, loader):
    from PIL import Image

    for split in ("train", "val"):
        for c in range(2):
            os.makedirs(tmp_path / split / f"c{c}", exist_ok=True)
            for i in range(16):
                Image.new("RGB", (36, 36), (c * 200, i * 10, 50)).save(tmp_path / split / f"c{c}" / f"{i}.png")
    (tmp_path / "train" / "c0" / "broken.jpg").write_bytes(b"garbage")
    res = _cli("--data", str(tmp_path / "train"), "--val", str(tmp_path / "val"), "--batch-size", "16",
               "--bn-splits", "2", "--width", "4", "--K", "32", "--epochs", "1", "--workers", "0",
               "--image-size", "16", "--no-progress", "--loader", loader, "--out", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr
    assert f"{loader} loader" in res.stdout
    assert "skipped 1 unreadable image(s) of 33" in res.stderr
    assert "kNN accuracy (k=200, t=0.1):" in res.stdout
