"""Nothing lost, nothing silent: verified checkpoints with a fallback, honest resume, typed settings, run paths."""
import math
import re
import subprocess
import sys

import pytest
import torch

from helpers import needs_fmnist, resolved, tiny
from fastmoco.train import ConfigError, train
from fastmoco.runs import checkpoint as ckpt_io
from fastmoco.cli.train import config_from_args

pytestmark = [needs_fmnist(), pytest.mark.slow]
TINY = tiny(subset=512, K=200, epochs=2)



def _flip_byte(path, at=0.5):
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_last_checkpoint_falls_back_to_the_previous_one(tmp_path):
    train(resolved(TINY, tmp_path, epochs=1), log=lambda *_: None)
    train(resolved(TINY, tmp_path, epochs=2, resume="auto"), log=lambda *_: None)  # last.pt = epoch 2, prev.pt = epoch 1
    assert torch.load(tmp_path / "prev.pt", weights_only=False)["epoch"] == 1
    _flip_byte(tmp_path / "last.pt")  # flipped tensor bytes: torch.load alone would accept them
    assert "checksum mismatch" in ckpt_io.verify(str(tmp_path / "last.pt"))
    with pytest.warns(UserWarning, match="corrupt .*checksum mismatch.*resuming from the previous checkpoint"):
        summary = train(resolved(TINY, tmp_path, epochs=2, resume="auto"), log=lambda *_: None)
    assert summary["epochs"] == 2  # epoch 2 trained again from epoch 1's checkpoint
    _flip_byte(tmp_path / "last.pt")
    with pytest.raises(ckpt_io.CheckpointError, match="last.pt is corrupt or unreadable .checksum mismatch"):
        ckpt_io.load(str(tmp_path / "last.pt"))  # without fallback: an error, never a silent load


def test_stale_temporaries_are_removed_when_a_run_starts(tmp_path):
    train(resolved(TINY, tmp_path, epochs=1), log=lambda *_: None)
    (tmp_path / "last.pt.tmp.99999").write_bytes(b"half a checkpoint")
    lines = []
    train(resolved(TINY, tmp_path, epochs=2, resume="auto"), log=lines.append)
    assert not (tmp_path / "last.pt.tmp.99999").exists()
    assert any("last.pt.tmp.99999" in line and "killed" in line for line in lines)


def test_resume_refuses_a_changed_model_or_data_setting(tmp_path):
    train(resolved(TINY, tmp_path, epochs=1), log=lambda *_: None)
    with pytest.raises(ConfigError, match=r"--resume: K cannot change on resume \(checkpoint: 200, now: 400\)"):
        train(resolved(TINY, tmp_path, K=400, resume="auto"), log=lambda *_: None)
    with pytest.raises(ConfigError, match=r"batch_size cannot change on resume \(checkpoint: 32, now: 64\)"):
        train(resolved(TINY, tmp_path, batch_size=64, resume="auto"), log=lambda *_: None)


def test_resume_applies_and_logs_a_changed_lr_everywhere(tmp_path):
    train(resolved(TINY, tmp_path, epochs=1), log=lambda *_: None)
    lines = []
    train(resolved(TINY, tmp_path, epochs=2, lr=0.5, resume="auto"), log=lines.append)
    assert any(line == "settings changed on resume: epochs 1 -> 2, lr 0.06 -> 0.5" for line in lines), lines
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    assert state["config"]["lr"] == 0.5
    # cosine schedule at the start of epoch 2 of 2 is 0.5 * (1 + cos(pi * (1 + 15/16) / 2)) of the new base lr
    lr_last = state["optimizer"]["param_groups"][0]["lr"]
    assert abs(lr_last - 0.5 * 0.5 * (1 + math.cos(math.pi * 31 / 32))) < 1e-12
    assert "lr: 0.5" in (tmp_path / "config.yaml").read_text()


def test_cli_resume_takes_unset_settings_from_the_checkpoint(tmp_path):
    out = str(tmp_path / "run")
    train(resolved(TINY, out, epochs=1, width=8), log=lambda *_: None)
    cfg = config_from_args(["--out", out, "--resume", "auto", "--epochs", "2"])
    assert (cfg.width, cfg.K, cfg.subset, cfg.epochs) == (8, 200, 512, 2)  # saved, saved, saved, given


@pytest.mark.parametrize("yaml_text,message", [
    ('symmetric: "no"\n', "symmetric must be bool, got 'no'"),
    ("lr: fast\n", "lr must be float, got 'fast'"),
    ("K: 1.5\n", "K must be int, got 1.5"),
])
def test_yaml_values_are_typed(tmp_path, yaml_text, message):
    (tmp_path / "c.yaml").write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        config_from_args(["--config", str(tmp_path / "c.yaml")])


def test_output_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    res = subprocess.run([sys.executable, "-m", "fastmoco.train", "--out", str(tmp_path / "file")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip() == f"fastmoco-train: error: --out {tmp_path / 'file'} is a " \
                                                         "file, not a directory"


@pytest.mark.parametrize("args,message", [
    (["--K", str(10**11)], r"this run needs at least \d+\.\d GiB \(queue 47683\.7, parameters .* GiB\) but cpu has"),
    (["--image-size", "16", "--stem", "imagenet"], "image size 16 is smaller than the network's total stride 32 "
                                                   "(stem 'imagenet'); use --image-size >= 32"),
    (["--threads", "-1"], "threads must be between 0 (torch's default) and this machine's"),
    (["--device", "tpu"], "unknown device 'tpu'; choose auto, cpu, cuda or cuda:N"),
    (["--workers", "-2"], "workers must be >= 0, got -2"),
])
def test_values_checked_before_anything_is_allocated(tmp_path, args, message, capsys):
    from fastmoco.cli import train as train_cli  # in-process (a subprocess pays ~5 s of torch import per case)

    assert train_cli.main(["--subset", "512", "--out", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastmoco-train: error: "), err
    assert re.search(message if "\\" in message else re.escape(message), lines[0]), lines[0]
    assert not (tmp_path / "r" / "last.pt").exists()


def test_exported_extractor_checks_values_and_resizes(tmp_path):
    from fastmoco.convert.extractor import export_run, load_extractor

    cfg = resolved(TINY, tmp_path, epochs=1)
    train(cfg, log=lambda *_: None)
    program = torch.export.load(export_run(str(tmp_path))["features"]).module()
    size = cfg.image_size or 28  # the training size, which the extractor resamples every input to
    images = torch.rand(3, 1, 28, 28)
    with pytest.raises(RuntimeError, match=r"expects float images in \[0, 1\]; got values outside .uint8 images"):
        program((images * 255).to(torch.uint8))
    with pytest.raises(RuntimeError, match=r"expects float images in \[0, 1\]"):
        program(images * 255)  # floats that were never scaled: the same mistake
    bigger = torch.nn.functional.interpolate(images, size=(56, 56), mode="bilinear", align_corners=False)
    expect = program(torch.nn.functional.interpolate(bigger, size=(size, size), mode="bilinear", align_corners=False))
    torch.testing.assert_close(program(bigger), expect, atol=1e-5, rtol=1e-5)  # any size in: resized inside
    with pytest.raises(Exception):
        program(torch.rand(3, 3, 28, 28))  # a 3-channel image into a 1-channel network (torch's guard message)
    extract = load_extractor(str(tmp_path / "export" / "features.pt2"))
    torch.testing.assert_close(extract(images), program(images))
    for bad, kind, message in [
        (torch.rand(1, 28, 28), ValueError, r"expected images shaped \(N, C, H, W\), got 3 dimensions \(1, 28, 28\)"),
        (torch.rand(2, 3, 28, 28), ValueError, "this extractor takes 1-channel images, got 3 channels"),
        ((images * 255).to(torch.uint8), TypeError, r"expected float images in \[0, 1\], got torch.uint8 .divide"),
        ([[0.5]], TypeError, "expected a tensor of images, got list"),
    ]:
        with pytest.raises(kind, match=message):
            extract(bad)
