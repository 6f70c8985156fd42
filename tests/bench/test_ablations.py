"""benchmarks/ablations_fmnist.py: the planned runs are the papers' settings, shared settings run once, a finished
run is read back instead of re-run, and the table/plots come out of the results."""
import importlib.util
import json
import os
import subprocess

import pytest

from fastmoco.cli.train import config_from_args

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def abl():
    spec = importlib.util.spec_from_file_location("ablations_fmnist",
                                                  os.path.join(ROOT, "benchmarks", "ablations_fmnist.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_plan_covers_the_papers_settings(abl):
    runs = abl.plan(abl.GROUPS)
    _resolved = lambda run: config_from_args(run.argv(["--epochs", "2", *abl.BASE]))  # noqa: E731
    by = lambda g: [r for r in runs if r.group == g]  # noqa: E731
    assert [_resolved(r).m for r in by("momentum")] == [0.0, 0.9, 0.99, 0.999, 0.9999]
    assert [_resolved(r).K for r in by("queue")] == [256, 1024, 4096, 16384, 65536]
    for head in ("linear", "mlp"):
        cfgs = [_resolved(r) for r in by(f"temperature/{head}")]
        assert [c.T for c in cfgs] == [0.07, 0.1, 0.2, 0.3, 0.5] and {c.head for c in cfgs} == {head}
    ladder = [_resolved(r) for r in by("ladder")]
    assert [(c.head, c.T, c.aug, c.schedule) for c in ladder] == [
        ("linear", 0.07, "v1", "step"), ("mlp", 0.2, "v1", "step"), ("linear", 0.07, "v2", "step"),
        ("mlp", 0.2, "v2", "step"), ("mlp", 0.2, "v2", "cosine")]
    # the rest of each group is the default recipe at the same budget, with the MoCo paper's ablation queue
    default = config_from_args(["--epochs", "2"])
    assert all(c.epochs == 2 and c.arch == default.arch and c.K == 4096 for c in ladder)
    assert {(c.K, c.T, c.head) for c in map(_resolved, by("momentum"))} == {(4096, 0.1, "mlp")}
    assert {(c.T, c.head) for c in map(_resolved, by("queue"))} == {(0.1, "mlp")}


def test_shared_settings_run_once(abl):
    runs = abl.plan(abl.GROUPS)
    keys = [r.settings(["--epochs", "2", *abl.BASE]) for r in runs]
    assert len(runs) == 25 and len(set(keys)) == 23  # m=0.99 == K=4096 == (mlp, T=0.1): run once


def _finished(tmp_path, run, base):
    run_dir = tmp_path / "runs" / run.name
    run_dir.mkdir(parents=True)
    config_from_args([*run.argv(base), "--out", str(run_dir)]).save(str(run_dir / "config.yaml"))
    saved = dict(knn=80.0, wall_s=1.0, steps=3, final_loss=4.0, loss_std_2nd_half=0.1, losses=[5, 4])
    (run_dir / "ablation.json").write_text(json.dumps(saved))
    return saved


class Trained(Exception):
    pass


def _no_training(*a, **k):
    raise Trained


def test_finished_run_is_read_back_not_rerun(abl, tmp_path, monkeypatch):
    run, base = abl.Run("momentum", "0.9", ["--m", "0.9"]), ["--epochs", "1", *abl.BASE]
    saved = _finished(tmp_path, run, base)
    monkeypatch.setattr(subprocess, "run", _no_training)
    assert abl.execute(run, base, str(tmp_path)) == saved


def test_run_left_with_other_settings_is_trained_again(abl, tmp_path, monkeypatch):
    run = abl.Run("momentum", "0.9", ["--m", "0.9"])
    _finished(tmp_path, run, ["--epochs", "1", "--K", "1024"])  # same flags, another queue: not this run
    monkeypatch.setattr(subprocess, "run", _no_training)
    with pytest.raises(Trained):
        abl.execute(run, ["--epochs", "1", *abl.BASE], str(tmp_path))


def test_table_and_plots_from_results(abl, tmp_path):
    runs = abl.plan(abl.GROUPS)
    for i, r in enumerate(runs):
        r.result = dict(knn=70.0 + i, wall_s=60.0, steps=10, final_loss=5.0 - 0.1 * i, loss_std_2nd_half=0.05,
                        losses=[6.0, 5.5, 5.0])
    text = abl.write_table(runs, ["--epochs", "2"], str(tmp_path), "header")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "setting" not in line]
    assert len(rows) == 25
    assert "| momentum | 0 | 70.00 % |" in text and "fails (loss oscillates)" in text
    assert "| ladder | MLP + aug+ + cos (= v2) | 94.00 % |" in text and "| 67.5 |" in text
    paths = abl.plot(runs, str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["ablations.png", "momentum_loss.png"]
    assert all(os.path.getsize(p) > 10_000 for p in paths)
    csv_text = (tmp_path / "ablations.csv").read_text()
    assert csv_text.count("\n") == 26 and "fastmoco-train --epochs 2 --preset v2" in csv_text
