"""Original MoCo v3 ResNet checkpoints in full, both ways: built here as the original code builds its model (a
torchvision ResNet whose fc is the projector, a separate momentum encoder and predictor), imported into a run that
resumes, exported back to the same layout, and read the way the original main_lincls.py reads it."""
import copy
import os
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn
from PIL import Image

from fastmoco.convert import ConvertError, export_v3, import_official
from fastmoco.train import TrainConfig, train
from fastmoco.runs.read import init_backbone, read_run


def _original_mlp(layers, d_in, hidden, d_out, last_bn):
    """The original's _build_mlp, written from its description."""
    mods = []
    for i in range(layers):
        a, b = d_in if i == 0 else hidden, d_out if i == layers - 1 else hidden
        mods.append(nn.Linear(a, b, bias=False))
        if i < layers - 1:
            mods += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        elif last_bn:
            mods.append(nn.BatchNorm1d(b, affine=False))
    return nn.Sequential(*mods)


def _original_v3(tmp_path, prefix="module.", hidden=64, dim=32, epoch=5):
    """(checkpoint path, base encoder, momentum encoder, predictor) in the original v3 ResNet layout."""
    torch.manual_seed(0)
    base = torchvision.models.resnet18(zero_init_residual=True)
    base.fc = _original_mlp(2, 512, hidden, dim, True)
    momentum = copy.deepcopy(base)
    predictor = _original_mlp(2, dim, hidden, dim, False)
    fill_distinct(base, momentum, predictor)
    return save_original_v3(tmp_path / "checkpoint_0005.pth.tar", prefix, base, momentum, predictor, epoch, "resnet18")


@torch.no_grad()
def fill_distinct(*nets, skip: str = "\0") -> None:
    """Every float tensor its own random values, so a key mapped to the wrong place changes an output."""
    for net in nets:
        for k, t in net.state_dict().items():
            if t.is_floating_point() and skip not in k:
                t.copy_(torch.rand_like(t) * 0.2 + (0.5 if t.dim() == 1 else -0.1))


def save_original_v3(path, prefix, base, momentum, predictor, epoch, arch):
    """The three networks saved as the original MoCo v3 code saves them; (path, the three in eval mode)."""
    sd = {f"{prefix}base_encoder.{k}": v for k, v in base.state_dict().items()}
    sd.update({f"{prefix}momentum_encoder.{k}": v for k, v in momentum.state_dict().items()})
    sd.update({f"{prefix}predictor.{k}": v for k, v in predictor.state_dict().items()})
    torch.save({"epoch": epoch, "arch": arch, "state_dict": sd, "optimizer": {}, "scaler": {}}, path)
    return str(path), base.eval(), momentum.eval(), predictor.eval()


def _fastmoco_model(run):
    from fastmoco.models import build_method

    state, cfg, meta = read_run(run)
    model = build_method(cfg.for_runtime("cpu", 1), meta["in_channels"])
    model.load_state_dict(state["model"])
    return model.eval(), cfg


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_import_in_full_gives_the_same_three_networks(tmp_path, prefix):
    path, base, momentum, predictor = _original_v3(tmp_path, prefix)
    summary = import_official(path, str(tmp_path / "run"))
    assert summary["format"] == "MoCo v3" and summary["arch"] == "resnet18"
    model, cfg = _fastmoco_model(str(tmp_path / "run"))
    assert (cfg.method, cfg.dim, cfg.mlp_dim, cfg.proj_layers, cfg.pred_last_bn) == ("v3", 32, 64, 2, False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder_q(x), base(x), rtol=0, atol=0)
        torch.testing.assert_close(model.encoder_k(x), momentum(x), rtol=0, atol=0)
        z = torch.randn(4, 32)
        torch.testing.assert_close(model.predictor(z), predictor(z), rtol=0, atol=0)


def test_export_round_trips_and_the_original_lincls_reads_it(tmp_path):
    path, base, _, _ = _original_v3(tmp_path)
    import_official(path, str(tmp_path / "run"))
    out = export_v3(str(tmp_path / "run"), str(tmp_path / "back.pth.tar"))
    back, original = torch.load(out, weights_only=True), torch.load(path, weights_only=True)
    assert back["epoch"] == 5 and back["arch"] == "resnet18"
    assert set(back["state_dict"]) == set(original["state_dict"])
    assert all(torch.equal(v, original["state_dict"][k]) for k, v in back["state_dict"].items())
    # main_lincls.py: module.base_encoder.* without its fc, into a torchvision ResNet, strict=False
    sd = {k[len("module.base_encoder."):]: v for k, v in back["state_dict"].items()
          if k.startswith("module.base_encoder.") and not k.startswith("module.base_encoder.fc.")}
    net = torchvision.models.resnet18()
    msg = net.load_state_dict(sd, strict=False)
    assert set(msg.missing_keys) == {"fc.weight", "fc.bias"} and not msg.unexpected_keys
    net.fc, base.fc = nn.Identity(), nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), base(x), rtol=0, atol=0)


@pytest.mark.slow
def test_an_imported_v3_run_resumes_and_init_takes_its_backbone(tmp_path):
    path, base, _, _ = _original_v3(tmp_path)
    run = tmp_path / "run"
    import_official(path, str(run))
    data = tmp_path / "data"
    for c in range(2):
        (data / f"c{c}").mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (40, 40), (30 * i, 90 * c, 11 * i)).save(data / f"c{c}" / f"{i}.png")
    done = subprocess.run([sys.executable, "-m", "fastmoco.cli.train", "--resume", "auto", "--out", str(run),
                           "--data", str(data), "--batch-size", "4", "--epochs", "12", "--width", "32"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "width cannot change on resume" in done.stderr  # the model's shape is fixed
    done = subprocess.run([sys.executable, "-m", "fastmoco.cli.train", "--resume", "auto", "--out", str(run),
                           "--data", str(data), "--batch-size", "4", "--epochs", "12", "--image-size", "64",
                           "--max-steps", "1", "--no-progress", "--workers", "0", "--loader", "torch"],
                          capture_output=True, text=True)  # data, batch and size are this run's own
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stdout and "at epoch 6" in done.stdout and "optimizer state starts afresh" in \
        done.stdout
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["position"]["step"] == 1 and "optimizer" in state and state["config"]["method"] == "v3"
    # --init of the original file's import: the backbone alone, into a new v3 run's both encoders
    from fastmoco.models import build_method

    cfg = TrainConfig(method="v3", arch="resnet18", width=64, stem="imagenet", mlp_dim=16).resolved()
    model = build_method(cfg.for_runtime("cpu", 1), 3)
    os.makedirs(tmp_path / "again")
    path2, base2, _, _ = _original_v3(tmp_path / "again")
    import_official(path2, str(tmp_path / "run2"))
    init_backbone(model, str(tmp_path / "run2"))
    base2.fc = nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder_k.backbone.eval()(x), base2(x), rtol=0, atol=0)


def test_a_v3_base_encoder_alone_imports_as_a_v3_run(tmp_path):
    """The file main_lincls.py reads (the base encoder, its projector as fc) is a v3 backbone: the run says method
    v3 and the projector's shape, so lincls runs v3's protocol on it."""
    path, base, *_ = _original_v3(tmp_path, hidden=48, dim=24)
    state = torch.load(path, weights_only=True)
    only = {k: v for k, v in state["state_dict"].items() if k.startswith("module.base_encoder.")}
    torch.save({"state_dict": only}, tmp_path / "base.pth.tar")
    summary = import_official(str(tmp_path / "base.pth.tar"), str(tmp_path / "run"))
    assert summary["format"] == "MoCo v3"
    saved, cfg, _ = read_run(str(tmp_path / "run"))
    assert (cfg.method, cfg.preset, cfg.head, cfg.mlp_dim, cfg.dim) == ("v3", "v3", "bn-mlp", 48, 24)
    assert not saved["imported"].get("resumable")
    sd = {k[len("encoder_q.backbone."):]: v for k, v in saved["model"].items()}
    want = {k: v for k, v in base.state_dict().items() if not k.startswith("fc.")}
    assert sd.keys() == want.keys() and all(torch.equal(sd[k], want[k]) for k in want)


def test_bad_v3_checkpoints_are_one_line_errors(tmp_path):
    path, *_ = _original_v3(tmp_path)
    state = torch.load(path, weights_only=True)
    sd = state["state_dict"]
    bad = dict(sd, **{"module.predictor.3.weight": torch.randn(7, 64)})  # the predictor's output is not dim
    torch.save(dict(state, state_dict=bad), tmp_path / "bad.pth.tar")
    with pytest.raises(ConvertError, match="predictor.3.weight"):
        import_official(str(tmp_path / "bad.pth.tar"), str(tmp_path / "r1"))
    odd = dict(sd, **{"module.extra.weight": torch.zeros(1)})
    torch.save(dict(state, state_dict=odd), tmp_path / "odd.pth.tar")
    with pytest.raises(ConvertError, match="unexpected key 'extra.weight'"):
        import_official(str(tmp_path / "odd.pth.tar"), str(tmp_path / "r2"))
    no_bn = {k: v for k, v in sd.items() if not k.startswith(("module.base_encoder.fc.4", "module.momentum_encoder.fc.4"))}
    torch.save(dict(state, state_dict=no_bn), tmp_path / "nobn.pth.tar")
    with pytest.raises(ConvertError, match="ends without its BatchNorm"):
        import_official(str(tmp_path / "nobn.pth.tar"), str(tmp_path / "r3"))
    gone = {k: v for k, v in sd.items() if k != "module.predictor.3.weight"}
    torch.save(dict(state, state_dict=gone), tmp_path / "gone.pth.tar")
    with pytest.raises(ConvertError, match=r"gone\.pth\.tar: missing key predictor\.3\.weight \(a Linear "
                                            r"layer of the MoCo v3 MLP, whose keys reach predictor\.3\.\*\)$"):
        import_official(str(tmp_path / "gone.pth.tar"), str(tmp_path / "r4"))
    assert not any((tmp_path / r).exists() for r in ("r1", "r2", "r3", "r4"))  # nothing written
    done = subprocess.run([sys.executable, "-m", "fastmoco.cli.convert", "moco-v3", str(tmp_path / "nothing"),
                           str(tmp_path / "x.pth")], capture_output=True, text=True)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
