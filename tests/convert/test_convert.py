"""Checkpoint interop: official MoCo layouts (built here from torchvision models, no downloads) in, torchvision and
detectron2 out, --init from an import, and one-line errors for bad inputs."""
import os
import pickle
import subprocess
import sys

import pytest
import torch
import torchvision

from fastmoco.convert import ConvertError, detectron2_key, import_official, to_detectron2, to_torchvision
from fastmoco.runs.read import load_backbone


def _official(tmp_path, arch="resnet50", version="v2", dim=128, K=1024, prefix="module.", name="moco.pth.tar"):
    """A checkpoint in the official layout from a torchvision model with random weights; returns (path, model)."""
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)()
    with torch.no_grad():  # non-trivial BN statistics, so a lost buffer would change the outputs
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    feat = net.fc.in_features
    base = "base_encoder." if version == "v3" else "encoder_q."
    sd = {f"{prefix}{base}{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    if version == "v1":
        head = {"fc.weight": torch.randn(dim, feat), "fc.bias": torch.randn(dim)}
    elif version == "v2":
        head = {"fc.0.weight": torch.randn(feat, feat), "fc.0.bias": torch.randn(feat),
                "fc.2.weight": torch.randn(dim, feat), "fc.2.bias": torch.randn(dim)}
    else:  # v3: projector with BatchNorm (Linear, BN, ReLU, Linear, BN)
        head = {"fc.0.weight": torch.randn(4096, feat), "fc.1.weight": torch.ones(4096), "fc.1.bias": torch.zeros(4096),
                "fc.1.running_mean": torch.zeros(4096), "fc.1.running_var": torch.ones(4096),
                "fc.1.num_batches_tracked": torch.tensor(0), "fc.3.weight": torch.randn(256, 4096),
                "fc.4.running_mean": torch.zeros(256), "fc.4.running_var": torch.ones(256),
                "fc.4.num_batches_tracked": torch.tensor(0)}
    sd.update({f"{prefix}{base}{k}": v for k, v in head.items()})
    if version != "v3":
        sd.update({f"{prefix}encoder_k.{k}": v.clone() for k, v in net.state_dict().items() if not k.startswith("fc.")})
        sd[f"{prefix}queue"] = torch.randn(dim, K)
        sd[f"{prefix}queue_ptr"] = torch.zeros(1, dtype=torch.long)
    else:  # the momentum encoder (backbone + projector) and the predictor (Linear, BN, ReLU, Linear)
        sd.update({f"{prefix}momentum_encoder.{k}": v.clone() for k, v in net.state_dict().items()
                   if not k.startswith("fc.")})
        sd.update({f"{prefix}momentum_encoder.{k}": v.clone() for k, v in head.items()})
        predictor = {"0.weight": torch.randn(4096, 256), "1.weight": torch.ones(4096), "1.bias": torch.zeros(4096),
                     "1.running_mean": torch.zeros(4096), "1.running_var": torch.ones(4096),
                     "1.num_batches_tracked": torch.tensor(0), "3.weight": torch.randn(256, 4096)}
        sd.update({f"{prefix}predictor.{k}": v for k, v in predictor.items()})
    path = tmp_path / name
    torch.save({"epoch": 200, "arch": arch, "state_dict": sd, "optimizer": {}}, path)
    net.fc = torch.nn.Identity()
    return str(path), net.eval()


@pytest.mark.parametrize("arch,version,prefix", [("resnet50", "v2", "module."), ("resnet18", "v1", "module."),
                                                 ("resnet50", "v3", "module."), ("resnet18", "v2", "")])
def test_import_then_torchvision_export_gives_the_same_backbone(tmp_path, arch, version, prefix):
    path, net = _official(tmp_path, arch, version, prefix=prefix)
    summary = import_official(path, str(tmp_path / "run"))
    assert summary["arch"] == arch and summary["width"] == 64 and summary["stem"] == "imagenet"
    assert summary["head"] == {"v1": "linear", "v2": "mlp", "v3": "projector + predictor + momentum encoder (epoch "
                                                                  "200)"}[version]
    backbone, cfg, meta = load_backbone(str(tmp_path / "run"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expect = net(x)
        torch.testing.assert_close(backbone.eval()(x), expect, rtol=0, atol=0)
    if version != "v3":
        assert cfg.K == 1024 and cfg.head == summary["head"] and cfg.dim == 128
        state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
        assert any(k.startswith("encoder_q.head.") for k in state["model"])
    out = to_torchvision(str(tmp_path / "run"), str(tmp_path / "tv.pth"))
    tv = getattr(torchvision.models, arch)()
    result = tv.load_state_dict(torch.load(out, weights_only=True), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    tv.fc = torch.nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(tv.eval()(x), expect, rtol=0, atol=0)


def test_import_to_a_backbone_file(tmp_path):
    path, net = _official(tmp_path, "resnet18", "v2")
    import_official(path, str(tmp_path / "backbone.pth"))
    tv = torchvision.models.resnet18()
    assert sorted(tv.load_state_dict(torch.load(tmp_path / "backbone.pth", weights_only=True),
                                     strict=False).missing_keys) == ["fc.bias", "fc.weight"]


def _expected_detectron2_name(key: str) -> str:
    """The official conversion's rules, written out independently of the implementation."""
    parts = key.split(".")
    if not parts[0].startswith("layer"):  # conv1.weight, bn1.*
        return "stem.conv1." + ("norm." + parts[1] if parts[0] == "bn1" else parts[1])
    stage = f"res{int(parts[0][5:]) + 1}"
    block, layer = parts[1], parts[2]
    if layer == "downsample":
        return ".".join([stage, block, "shortcut"] + (["norm"] if parts[3] == "1" else []) + parts[4:])
    if layer.startswith("bn"):
        return ".".join([stage, block, f"conv{layer[2:]}", "norm"] + parts[3:])
    return ".".join([stage, block] + parts[2:])


def test_detectron2_keys_follow_the_official_renaming(tmp_path):
    path, _ = _official(tmp_path, "resnet50", "v2")
    import_official(path, str(tmp_path / "run"))
    out = to_detectron2(str(tmp_path / "run"), str(tmp_path / "d2.pkl"))
    with open(out, "rb") as fh:
        blob = pickle.load(fh)
    assert blob["matching_heuristics"] is True and blob["__author__"]
    sd = {k: v for k, v in torchvision.models.resnet50().state_dict().items() if not k.startswith("fc.")}
    assert set(blob["model"]) == {_expected_detectron2_name(k) for k in sd}
    assert {"stem.conv1.weight", "stem.conv1.norm.running_var", "res2.0.conv1.weight", "res2.0.conv3.norm.bias",
            "res3.0.shortcut.weight", "res3.0.shortcut.norm.running_mean", "res5.2.conv2.norm.weight"} <= set(blob["model"])
    assert detectron2_key("layer4.0.downsample.1.weight") == "res5.0.shortcut.norm.weight"
    assert all(hasattr(v, "dtype") and not isinstance(v, torch.Tensor) for v in blob["model"].values())  # numpy


def test_bad_inputs_are_one_line_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(ConvertError, match="is not a PyTorch checkpoint"):
        import_official(str(tmp_path / "notes.txt"), str(tmp_path / "a"))
    torch.save({"state_dict": {"backbone.conv.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(ConvertError, match="unrecognised checkpoint, e.g. key 'backbone.conv.weight'"):
        import_official(str(tmp_path / "other.pth"), str(tmp_path / "b"))
    deep = torchvision.models.resnet101().state_dict()  # Bottleneck [3, 4, 23, 3]: not built here
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in deep.items()}}, tmp_path / "r101.pth")
    with pytest.raises(ConvertError, match=r"unsupported ResNet: Bottleneck blocks \[3, 4, 23, 3\]"):
        import_official(str(tmp_path / "r101.pth"), str(tmp_path / "c"))
    path, _ = _official(tmp_path, "resnet18", "v2")
    sd = torch.load(path, weights_only=False)
    del sd["state_dict"]["module.encoder_q.layer3.0.conv1.weight"]
    torch.save(sd, tmp_path / "holed.pth")
    with pytest.raises(ConvertError, match="missing key layer3.0.conv1.weight"):
        import_official(str(tmp_path / "holed.pth"), str(tmp_path / "d"))
    res = subprocess.run([sys.executable, "-m", "fastmoco.cli.convert", "import", str(tmp_path / "notes.txt"),
                          str(tmp_path / "e")], capture_output=True, text=True)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert res.stderr.startswith("fastmoco-convert: error:")


def test_small_run_has_no_torchvision_counterpart(tmp_path):
    from fastmoco.train import TrainConfig, train

    cfg = TrainConfig(subset=256, batch_size=64, epochs=1, width=4, K=128, progress=False, knn_every=0,
                      out=str(tmp_path / "run")).resolved()
    if not os.path.isdir(cfg.data):
        pytest.skip("apt-get install dataset-fashion-mnist")
    train(cfg, log=lambda *_: None)
    with pytest.raises(ConvertError, match=r"no torchvision counterpart: arch resnet10, width 4 \(not 64\), stem small-s2"):
        to_torchvision(str(tmp_path / "run"), str(tmp_path / "x.pth"))


def test_imported_run_starts_training_with_init_but_does_not_resume(tmp_path):
    from fastmoco.models import MoCo
    from fastmoco.train import TrainConfig
    from fastmoco.runs.checkpoint import CheckpointError
    from fastmoco.runs.read import init_backbone
    from fastmoco.train.state import restore

    path, net = _official(tmp_path, "resnet18", "v2")
    import_official(path, str(tmp_path / "run"))
    cfg = TrainConfig(arch="resnet18", width=64, stem="imagenet", K=64, batch_size=4, bn_splits=2).resolved()
    model = MoCo.from_config(cfg, 3)
    init_backbone(model, str(tmp_path / "run"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for enc in (model.encoder_q, model.encoder_k):
            torch.testing.assert_close(enc.backbone.eval()(x), net(x), rtol=0, atol=0)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    with pytest.raises(CheckpointError, match="start a new run from them with --init"):
        restore(state, model, None, None, str(tmp_path / "run" / "last.pt"))
    from fastmoco.evaluate.lincls import LinclsSettings, run_lincls
    from fastmoco.runs.config import ConfigError
    with pytest.raises(ConfigError, match="holds imported weights without a dataset: pass --data"):
        run_lincls(str(tmp_path / "run"), LinclsSettings(progress=False))
    small = MoCo.from_config(TrainConfig(arch="resnet18", width=16, K=64, batch_size=4, bn_splits=1).resolved(), 3)
    with pytest.raises(ConfigError, match="does not fit this backbone"):
        init_backbone(small, str(tmp_path / "run"))


def test_a_tensor_of_the_wrong_shape_or_a_queue_of_the_wrong_width_is_one_line(tmp_path, capsys):
    from fastmoco.cli import convert as convert_cli

    path, _ = _official(tmp_path, "resnet18", "v2")
    sd = torch.load(path, weights_only=True)
    sd["state_dict"]["module.encoder_q.layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    torch.save(sd, tmp_path / "reshaped.pth")
    assert convert_cli.main(["import", str(tmp_path / "reshaped.pth"), str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"fastmoco-convert: error: {tmp_path / 'reshaped.pth'}: the backbone does not fit a resnet18 of "
                   "width 64, imagenet stem (size mismatch for layer2.0.conv1.weight: the file holds (128, 64, 1, 1), this model "
                   "needs (128, 64, 3, 3))")
    sd = torch.load(path, weights_only=True)
    sd["state_dict"]["module.queue"] = torch.randn(64, 1024)  # the head is 128 wide
    torch.save(sd, tmp_path / "queue.pth")
    with pytest.raises(ConvertError, match=r"module.queue is \(64, 1024\), but the head's output is 128 wide"):
        import_official(str(tmp_path / "queue.pth"), str(tmp_path / "b"))
    sd = torch.load(path, weights_only=True)
    sd["state_dict"]["module.encoder_q.fc.2.weight"] = torch.randn(128, 256)  # its input is 512 wide
    torch.save(sd, tmp_path / "head.pth")
    with pytest.raises(ConvertError, match=r"the mlp head does not fit a mlp head on 512 features \(size mismatch "
                                           r"for 2.weight"):
        import_official(str(tmp_path / "head.pth"), str(tmp_path / "c"))
    assert not any((tmp_path / d).exists() for d in "abc")  # a refused import writes nothing


def test_init_from_an_imported_run_takes_its_architecture(tmp_path):
    from fastmoco.runs.config import ConfigError
    from fastmoco.cli.train import config_from_args

    path, _ = _official(tmp_path, "resnet18", "v1")
    import_official(path, str(tmp_path / "run"))
    cfg = config_from_args(["--init", str(tmp_path / "run"), "--out", str(tmp_path / "new")])
    assert (cfg.arch, cfg.width, cfg.stem) == ("resnet18", 64, "imagenet")
    cfg = config_from_args(["--init", str(tmp_path / "run" / "last.pt"), "--width", "32"])  # a flag still wins
    assert (cfg.arch, cfg.width, cfg.stem) == ("resnet18", 32, "imagenet")
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "plain.pth")  # no config: the defaults
    assert config_from_args(["--init", str(tmp_path / "plain.pth")]).arch == "resnet10"
    with pytest.raises(ConfigError, match="--init: checkpoint not found"):
        config_from_args(["--init", str(tmp_path / "missing.pth")])
