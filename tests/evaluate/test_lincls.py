"""The linear protocol: the paper's schedule and transforms, a fast-protocol classifier that learns, a frozen
backbone, torchrun sharding, one-line errors."""
import os
import subprocess
import sys

import pytest
import torch

from helpers import FMNIST_DIR, needs_fmnist
from processes import free_port
from fastmoco.evaluate import lincls
from fastmoco.evaluate.lincls import PROTOCOLS, LinclsSettings, lr_at, run_lincls


def test_official_protocol_is_the_papers():
    p = PROTOCOLS["official"]
    assert (p["lr"], p["momentum"], p["weight_decay"], p["batch_size"], p["epochs"]) == (30.0, 0.9, 0.0, 256, 100)
    lrs = [lr_at(p, p["lr"], e, 100) for e in range(100)]
    assert lrs[:60] == [30.0] * 60
    assert all(abs(v - 3.0) < 1e-9 for v in lrs[60:80]) and all(abs(v - 0.3) < 1e-9 for v in lrs[80:])
    assert abs(p["resize_ratio"] * 224 - 256) < 1e-9


def test_protocol_transforms():
    from PIL import Image
    from torchvision.transforms import v2

    from fastmoco.data.transforms import crop_flip_transform, eval_transform

    train = crop_flip_transform(224, (0.5,) * 3, (0.5,) * 3)
    crop = next(t for t in train.transforms if isinstance(t, v2.RandomResizedCrop))
    assert crop.scale == (0.08, 1.0) and any(isinstance(t, v2.RandomHorizontalFlip) for t in train.transforms)
    ev = eval_transform(224, (0.5,) * 3, (0.5,) * 3, 256 / 224)
    assert next(t for t in ev.transforms if isinstance(t, v2.Resize)).size == [256]
    assert ev(Image.new("RGB", (400, 300))).shape == (3, 224, 224)
    grey = eval_transform(28, (0.5,) * 3, (0.5,) * 3, 1.0, channels=3)(torch.zeros(1, 28, 28, dtype=torch.uint8))
    assert grey.shape == (3, 28, 28)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A one-epoch run on 512 Fashion-MNIST images (a few seconds)."""
    from fastmoco.train import TrainConfig, train

    if not os.path.isdir(FMNIST_DIR):
        pytest.skip("apt-get install dataset-fashion-mnist")
    out = str(tmp_path_factory.mktemp("run"))
    train(TrainConfig(subset=512, batch_size=64, epochs=1, width=8, K=256, progress=False, out=out,
                      overwrite=True).resolved(), log=lambda *_: None)
    return out


@needs_fmnist()
def test_fast_protocol_learns_and_writes_its_outputs(tiny_run):
    res = run_lincls(tiny_run, LinclsSettings(subset=2000, epochs=20, knn=True, progress=False, workers=0),
                     log=lambda *_: None)
    assert res["protocol"] == "fast"
    assert res["top1"] > 50.0 and res["top5"] > res["top1"]  # chance is 10 %
    assert res["knn_top1"] > 50.0
    out = os.path.join(tiny_run, "lincls")
    with open(os.path.join(out, "metrics.csv")) as fh:
        rows = fh.read().strip().splitlines()
    assert rows[0] == "epoch,loss,lr,top1,top5" and len(rows) == 21
    saved = torch.load(os.path.join(out, "classifier.pt"), weights_only=False)
    assert saved["fc"]["weight"].shape == (10, 64) and saved["top1"] == res["top1"]


@needs_fmnist()
def test_non_finite_numbers_are_refused_before_anything_is_written(tiny_run, capsys):
    from fastmoco.cli import lincls as lincls_cli

    out = os.path.join(tiny_run, "lincls-nan")
    for flag, value in (("--lr", "nan"), ("--lr", "inf"), ("--lr", "-inf")):
        assert lincls_cli.main([tiny_run, f"{flag}={value}", "--out", out, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"fastmoco-lincls: error: lr must be a finite number, got {float(value)}", err
    assert not os.path.exists(out)


@needs_fmnist()
def test_it_says_which_checkpoint_it_evaluates(tiny_run, tmp_path):
    from fastmoco.runs import checkpoint as ckpt_io

    lines = []
    run_lincls(tiny_run, LinclsSettings(subset=512, epochs=1, progress=False, workers=0, out=str(tmp_path)),
               log=lines.append)
    assert lines[0] == f"evaluating {os.path.join(tiny_run, 'last.pt')}: epoch 1 of 1 finished", lines
    state = ckpt_io.load(os.path.join(tiny_run, "last.pt"))  # as a run still training would have left it
    state["position"].update(epoch=0, samples=128)
    ckpt_io.save_atomic(state, str(tmp_path / "mid.pt"))
    lines = []
    run_lincls(str(tmp_path / "mid.pt"), LinclsSettings(subset=512, epochs=1, progress=False, workers=0,
                                                        out=str(tmp_path)), log=lines.append)
    assert lines[0] == (f"evaluating {tmp_path / 'mid.pt'}: epoch 0 of 1 finished, 128 images into epoch 1 (the run "
                        "had not finished: it may still be training)")


@needs_fmnist()
def test_official_protocol_keeps_the_backbone_frozen(tiny_run, monkeypatch, tmp_path):
    from fastmoco.runs import read as export

    seen = {}
    real = export.backbone_from

    def spy(*a, **kw):
        backbone = real(*a, **kw)
        seen["backbone"] = backbone
        seen["before"] = {k: v.clone() for k, v in backbone.state_dict().items()}
        return backbone

    monkeypatch.setattr(export, "backbone_from", spy)
    res = run_lincls(tiny_run, LinclsSettings(protocol="official", subset=512, epochs=2, lr=1.0, workers=0,
                                              progress=False, out=str(tmp_path)), log=lambda *_: None)
    assert res["protocol"] == "official" and 0 <= res["top1"] <= 100
    after = seen["backbone"].state_dict()
    assert all(torch.equal(after[k], v) for k, v in seen["before"].items())  # weights and BN statistics
    assert not seen["backbone"].training and all(p.grad is None for p in seen["backbone"].parameters())
    with open(tmp_path / "metrics.csv") as fh:
        assert len(fh.read().strip().splitlines()) == 3



@pytest.mark.heavy  # several processes for ~15-20 s: the heavy set (make test-heavy)
@needs_fmnist()
def test_torchrun_shards_the_features_and_trains_one_classifier(tiny_run, tmp_path):
    args = [tiny_run, "--subset", "1000", "--epochs", "10", "--workers", "0", "--no-progress", "--device", "cpu"]
    one = run_lincls(tiny_run, LinclsSettings(subset=1000, epochs=10, workers=0, progress=False, device="cpu",
                                              out=str(tmp_path / "one")), log=lambda *_: None)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(free_port()), "-m", "fastmoco.lincls", *args,
                          "--out", str(tmp_path / "two")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("linear top-1") == 1  # one process reports
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("linear top-1"))
    assert abs(float(line.split()[2]) - one["top1"]) <= 0.5


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    from fastmoco.cli import lincls as lincls_cli  # in-process; one real process below

    assert lincls_cli.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit) as stop:  # argparse's own error: usage and one line
        lincls_cli.main([str(tmp_path), "--protocol", "svm"])
    assert stop.value.code == 2 and "invalid choice: 'svm'" in capsys.readouterr().err

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "fastmoco.lincls", *args], capture_output=True, text=True)

    (tmp_path / "empty").mkdir()
    res = cli(str(tmp_path / "empty"))
    assert res.returncode == 2 and res.stderr.strip() == (
        f"fastmoco-lincls: error: {tmp_path / 'empty'} is not a fastmoco run directory (no last.pt)")


def test_official_means_the_protocol_of_the_runs_method_and_backbone():
    from fastmoco.evaluate.lincls import PROTOCOLS, official_for
    from fastmoco.train import TrainConfig

    assert official_for(TrainConfig().resolved()) == "official"  # MoCo v1/v2: lr 30, 100 epochs, steps
    assert official_for(TrainConfig(method="v3").resolved()) == "v3"
    assert official_for(TrainConfig(method="v3", arch="vit_small", epochs=300).resolved()) == "v3-vit"
    v3, vit = PROTOCOLS["v3"], PROTOCOLS["v3-vit"]
    assert (v3["lr"], vit["lr"], v3["batch_size"], v3["epochs"], v3["weight_decay"], v3["milestones"]) == (
        0.4, 12.0, 1024, 90, 0.0, None)  # 0.1 and 3 x batch/256, cosine, no weight decay
