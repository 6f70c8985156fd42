"""The CLI at its edges: Ctrl-C before training starts, a resume with nothing left to train, settings that cannot
work (sync-BN in one CPU process, NaN and infinity)."""
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import needs_fmnist, tiny
from fastmoco.train import ConfigError, TrainConfig, train
from fastmoco.cli.train import config_from_args


@pytest.mark.parametrize("how,delay", [("fastmoco-train", 0.2), ("fastmoco-train", 2.0),
                                       ("python -m fastmoco.train", 0.5)])
def test_ctrl_c_in_the_first_seconds_is_one_line(tmp_path, delay, how):
    cmd = ["fastmoco-train"] if how == "fastmoco-train" else [sys.executable, "-m", "fastmoco.train"]
    # SIGINT back to its default in the child: a runner started in the background (`nohup make test &`) passes
    # SIGINT on ignored, and a Python that starts with SIGINT ignored never raises KeyboardInterrupt
    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "run"), "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay)  # importing torch, reading the data, building the model: before the first step
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("fastmoco-train: "), err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


TINY = tiny(subset=512, K=64, epochs=2, knn_k=5)


@needs_fmnist()
@pytest.mark.slow
def test_a_resume_with_nothing_left_to_train_says_so_and_writes_nothing(tmp_path):
    out = str(tmp_path / "run")
    train(TrainConfig(**TINY, out=out, max_steps=3).resolved(), log=lambda *_: None)
    before = open(os.path.join(out, "last.pt"), "rb").read()
    lines = []
    summary = train(config_from_args(["--out", out, "--resume", "auto"]), log=lines.append)  # max_steps 3, saved
    assert any(ln == f"nothing to train: {out} stopped at step 3, --max-steps is 3 (raise it, or pass --max-steps 0 "
                     "to train to the end of --epochs)" for ln in lines), lines
    assert summary["steps"] == 3 and open(os.path.join(out, "last.pt"), "rb").read() == before
    train(config_from_args(["--out", out, "--resume", "auto", "--max-steps", "0"]), log=lambda *_: None)
    lines = []
    train(config_from_args(["--out", out, "--resume", "auto"]), log=lines.append)
    assert f"nothing to train: {out} has finished all 2 epochs (pass a larger --epochs to train on)" in lines


def test_sync_bn_is_refused_where_it_cannot_work():
    cfg = TrainConfig(sync_bn=True, bn_splits=1).resolved()
    with pytest.raises(ConfigError, match="sync_bn needs CUDA devices"):
        cfg.for_runtime("cpu", 1)
    with pytest.raises(ConfigError, match="sync_bn needs CUDA devices"):
        cfg.for_runtime("cpu", 2)
    with pytest.raises(ConfigError, match=r"sync_bn needs several processes \(torchrun\)"):
        cfg.for_runtime("cuda", 1)
    assert cfg.for_runtime("cuda", 2).sync_bn


@pytest.mark.parametrize("args,message", [
    (["--lr", "nan"], "lr must be a finite number, got nan"),
    (["--m", "nan"], "m must be a finite number, got nan"),
    (["--T=-inf"], "T must be a finite number, got -inf"),
    (["--warmup-epochs", "inf"], "warmup_epochs must be a finite number, got inf"),
])
def test_non_finite_numbers_are_refused(args, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        config_from_args(args)


def test_non_finite_numbers_from_yaml_are_refused(tmp_path):
    (tmp_path / "c.yaml").write_text("knn_t: .nan\n")
    with pytest.raises(ConfigError, match="^knn_t must be a finite number, got nan$"):
        config_from_args(["--config", str(tmp_path / "c.yaml")])
