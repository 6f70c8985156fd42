"""Checkpoints never run code and never fail in a wall of text: every entry point loads with weights_only (a file
whose unpickling would create a marker file is refused and creates nothing), a failed write (file-size limit, full
disk) is one line naming the cause and the path and leaves the old file as it was, and a checkpoint that does not
fit names the first key concerned."""
import errno
import os
import subprocess
import sys

import pytest
import torch

from fastmoco.cli import convert as convert_cli
from fastmoco.cli import export as export_cli
from fastmoco.cli import lincls as lincls_cli
from fastmoco.cli import train as train_cli
from fastmoco.runs import checkpoint as ckpt_io


class _Planted:
    """Unpickling this object opens (and so creates) the file ``marker``: a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _hostile(path, marker, **fields):
    """A valid zip archive (its CRCs pass) shaped like a fastmoco checkpoint, with a planted object inside."""
    torch.save(dict(model={}, optimizer={}, epoch=0, config={"arch": "resnet10"}, payload=_Planted(marker), **fields),
               path)
    return str(path)


@pytest.fixture
def hostile(tmp_path):
    marker = tmp_path / "code-ran"
    path = _hostile(tmp_path / "download.pt", marker)
    torch.load(path, weights_only=False)  # the payload works: a full unpickle creates the marker
    assert marker.exists()
    marker.unlink()
    return path, marker


def _run_dir_with(tmp_path, hostile_path):
    run = tmp_path / "run"
    run.mkdir()
    os.replace(hostile_path, run / "last.pt")  # planted as a run directory's checkpoint
    return str(run)


@pytest.mark.parametrize("entry", ["train --resume FILE", "train --resume auto (planted last.pt)", "train --init FILE",
                                   "train --init RUN_DIR", "lincls FILE", "lincls RUN_DIR", "export --checkpoint",
                                   "convert import"])
def test_a_hostile_file_is_refused_in_one_line_and_runs_nothing(tmp_path, hostile, capsys, entry):
    path, marker = hostile
    out = str(tmp_path / "out")
    calls = {
        "train --resume FILE": lambda: train_cli.main(["--resume", path, "--out", out]),
        "train --resume auto (planted last.pt)": lambda: train_cli.main(
            ["--resume", "auto", "--out", _run_dir_with(tmp_path, path)]),
        "train --init FILE": lambda: train_cli.main(["--init", path, "--out", out]),
        "train --init RUN_DIR": lambda: train_cli.main(["--init", _run_dir_with(tmp_path, path), "--out", out]),
        "lincls FILE": lambda: lincls_cli.main([path, "--device", "cpu"]),
        "lincls RUN_DIR": lambda: lincls_cli.main([_run_dir_with(tmp_path, path), "--device", "cpu"]),
        "export --checkpoint": lambda: export_cli.main([str(tmp_path), "--checkpoint", path]),
        "convert import": lambda: convert_cli.main(["import", path, out]),
    }
    assert calls[entry]() == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "refused to load" in err and "io.open" in err and "runs code" in err, err
    assert not marker.exists()
    assert not os.path.exists(out)  # nothing written either


def test_a_refused_last_checkpoint_does_not_fall_back_to_the_previous_one(tmp_path, hostile):
    path, marker = hostile
    run = _run_dir_with(tmp_path, path)
    torch.save(dict(model={}, optimizer={}, epoch=1), os.path.join(run, "prev.pt"))  # a harmless previous one
    with pytest.raises(ckpt_io.UnsafeCheckpoint, match="refused to load"):
        ckpt_io.load(os.path.join(run, "last.pt"), fallback=True)
    assert not marker.exists()


def test_fastmocos_own_checkpoint_contents_load_safely(tmp_path):
    # every type a training checkpoint holds: RNG states (numpy's is an ndarray), optimizer and scaler state,
    # nested dicts, lists, None, floats
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    payload = dict(model=model.state_dict(), optimizer=opt.state_dict(), epoch=1, rng=ckpt_io.rng_state(),
                   scaler=torch.amp.GradScaler("cpu", enabled=False).state_dict(), position=dict(history=[{"a": 1.5}]),
                   config={"val": None, "lr": 0.1})
    ckpt_io.save_atomic(payload, str(tmp_path / "last.pt"))
    back = ckpt_io.load(str(tmp_path / "last.pt"))
    ckpt_io.set_rng_state(back["rng"])
    assert torch.equal(back["model"]["weight"], model.weight) and back["position"]["history"] == [{"a": 1.5}]


_LIMITED_WRITE = """
import resource, sys, torch
from fastmoco.runs import checkpoint as ckpt_io
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))  # 64 KiB per file (Python ignores SIGXFSZ)
try:
    ckpt_io.save_atomic({"w": torch.zeros(1 << 16)}, sys.argv[1], keep_previous=True)
except ckpt_io.CheckpointError as exc:
    print(exc)
"""


def test_a_file_size_limit_during_a_write_is_one_line_and_keeps_the_old_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    ckpt_io.save_atomic({"epoch": 1}, str(path))
    before = path.read_bytes()
    res = subprocess.run([sys.executable, "-c", _LIMITED_WRITE, str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"cannot write {path}: File too large; the file there (if any) is unchanged"
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["last.pt"]  # no temporary, no prev.pt


class _FillsUp:
    """A file whose disk fills after ``room`` bytes, as ENOSPC does on a real one."""

    def __init__(self, path, mode, room=4096):
        self.fh, self.room = open(path, mode), room

    def write(self, data):
        if self.fh.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def test_a_full_disk_during_a_write_is_one_line_through_the_cli(tmp_path, monkeypatch, capsys):
    import torchvision

    sd = {f"module.encoder_q.{k}": v for k, v in torchvision.models.resnet18().state_dict().items()}
    torch.save({"state_dict": sd}, tmp_path / "official.pth")
    out = tmp_path / "backbone.pth"
    monkeypatch.setattr(ckpt_io, "open", lambda path, mode: _FillsUp(path, mode), raising=False)
    assert convert_cli.main(["import", str(tmp_path / "official.pth"), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"fastmoco-convert: error: cannot write {out}: No space left on device; the file there (if any) " \
                  "is unchanged"
    assert sorted(os.listdir(tmp_path)) == ["official.pth"]  # the temporary file is gone


def test_an_out_that_is_a_directory_or_a_taken_temporary_name_is_one_line(tmp_path, capsys):
    import torchvision

    sd = {f"module.encoder_q.{k}": v for k, v in torchvision.models.resnet18().state_dict().items()}
    torch.save({"state_dict": sd}, tmp_path / "official.pth")
    out = tmp_path / "backbone.pth"
    out.mkdir()
    assert convert_cli.main(["import", str(tmp_path / "official.pth"), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"fastmoco-convert: error: cannot write {out}: it is a directory; give a file name (or remove " \
                  "the directory)"
    assert os.listdir(out) == [] and sorted(os.listdir(tmp_path)) == ["backbone.pth", "official.pth"]
    taken = tmp_path / f"b.pt.tmp.{os.getpid()}"  # a directory under the name the write would use first
    (taken / "inside").mkdir(parents=True)
    ckpt_io.save_atomic({"x": torch.ones(2)}, str(tmp_path / "b.pt"))
    assert torch.load(tmp_path / "b.pt")["x"].sum() == 2 and os.listdir(taken) == ["inside"]
    assert ckpt_io.remove_stale_temporaries(str(tmp_path)) == [] and taken.is_dir()


def test_a_checkpoint_that_does_not_fit_names_the_key(tmp_path):
    from fastmoco.models import MoCo
    from fastmoco.train import TrainConfig
    from fastmoco.train.state import restore

    cfg = TrainConfig(K=64, batch_size=4, bn_splits=1).resolved()
    model = MoCo.from_config(cfg, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = dict(model=dict(model.state_dict()), optimizer=opt.state_dict())
    state["model"]["queue"] = torch.zeros(32, 128)  # a run with another K
    with pytest.raises(ckpt_io.CheckpointError, match=r"^checkpoint c.pt does not fit this model/config \(size "
                                                      r"mismatch for queue: the file holds \(32, 128\), this model "
                                                      r"needs \(64, 128\)\)$"):
        restore(state, model, opt, None, "c.pt")
    del state["model"]["queue"], state["model"]["ptr"]
    with pytest.raises(ckpt_io.CheckpointError, match=r"\(missing key queue \(and 1 more\)\)$"):
        restore(state, model, opt, None, "c.pt")
