"""ViT checkpoints both ways: the original MoCo v3 ViT layout (built here as its code builds the model: a timm
VisionTransformer with a stored sin-cos pos_embed and the 3-layer projector as its head, a momentum copy and a
predictor with its last BN) imported into a run that resumes and that --init starts from, exported back to the same
layout, and a run's ViT written as a timm state_dict that timm.create_model(...) loads with the same outputs."""
import copy
from functools import partial
import math
import subprocess
import sys

import pytest
import timm
import torch
from PIL import Image
from timm.models.vision_transformer import VisionTransformer

from fastmoco.convert import ConvertError, export_v3, import_official, timm_export
from fastmoco.models import build_backbone, build_method
from fastmoco.train import TrainConfig
from fastmoco.runs.read import init_backbone, load_backbone, read_run

from test_convert_v3 import _original_mlp, fill_distinct, save_original_v3

FMNIST_VIT = dict(patch_size=4, embed_dim=96, depth=4, num_heads=3)


def _hand_table(grid, dim):
    """(1, 1 + grid^2, dim): a zero row for the class token, then the original's formula entry by entry."""
    q = dim // 4
    rows = [[0.0] * dim]
    for k in range(grid * grid):
        gw, gh = k // grid, k % grid
        om = [1.0 / 1e4 ** (i / q) for i in range(q)]
        rows.append([math.sin(gw * o) for o in om] + [math.cos(gw * o) for o in om]
                    + [math.sin(gh * o) for o in om] + [math.cos(gh * o) for o in om])
    return torch.tensor(rows)[None]


def _original_vit(size=28, channels=1):
    """The original's ViT (timm VisionTransformer, pos_embed a fixed sin-cos table) at vit_fmnist's geometry."""
    net = VisionTransformer(img_size=size, in_chans=channels, num_classes=0, qkv_bias=True, mlp_ratio=4.0,
                            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), **FMNIST_VIT)
    return net


def _original_v3_vit(tmp_path, prefix="module.", hidden=64, dim=32, epoch=7, size=28, channels=1):
    torch.manual_seed(0)
    base = _original_vit(size, channels)
    fill_distinct(base)
    with torch.no_grad():
        base.pos_embed.copy_(_hand_table(size // 4, 96))
    base.head = _original_mlp(3, 96, hidden, dim, True)
    momentum = copy.deepcopy(base)
    predictor = _original_mlp(2, dim, hidden, dim, True)
    fill_distinct(base.head, momentum, predictor, skip="pos_embed")
    return save_original_v3(tmp_path / "vit_checkpoint_0007.pth.tar", prefix, base, momentum, predictor, epoch,
                            "vit_small")


def _model(run):
    state, cfg, meta = read_run(run)
    model = build_method(cfg.for_runtime("cpu", 1), meta["in_channels"])
    model.load_state_dict(state["model"])
    return model.eval(), cfg, meta


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_import_in_full_gives_the_same_three_networks(tmp_path, prefix):
    path, base, momentum, predictor = _original_v3_vit(tmp_path, prefix)
    summary = import_official(path, str(tmp_path / "run"))
    assert summary["format"] == "MoCo v3" and summary["arch"] == "vit_fmnist" and summary["image_size"] == 28
    model, cfg, meta = _model(str(tmp_path / "run"))
    assert (cfg.method, cfg.arch, cfg.dim, cfg.mlp_dim, cfg.proj_layers, cfg.pred_last_bn, cfg.optimizer) == \
        ("v3", "vit_fmnist", 32, 64, 3, True, "adamw")
    assert meta["in_channels"] == 1 and cfg.image_size == 28
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder_q(x), base(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.encoder_k(x), momentum(x), rtol=1e-5, atol=1e-5)
        z = torch.randn(4, 32)
        torch.testing.assert_close(model.predictor(z), predictor(z), rtol=0, atol=0)


def test_export_round_trips_and_the_original_lincls_reads_it(tmp_path):
    path, base, _, _ = _original_v3_vit(tmp_path)
    import_official(path, str(tmp_path / "run"))
    out = export_v3(str(tmp_path / "run"), str(tmp_path / "back.pth.tar"))
    back, original = torch.load(out, weights_only=True), torch.load(path, weights_only=True)
    assert back["epoch"] == 7 and back["arch"] == "vit_fmnist"
    assert set(back["state_dict"]) == set(original["state_dict"])  # pos_embed of both encoders included
    for k, v in back["state_dict"].items():
        torch.testing.assert_close(v, original["state_dict"][k], rtol=0, atol=1e-6 if "pos_embed" in k else 0)
    # main_lincls.py for ViTs: module.base_encoder.* without head.*, into a ViT with a fresh classifier
    sd = {k[len("module.base_encoder."):]: v for k, v in back["state_dict"].items()
          if k.startswith("module.base_encoder.") and not k.startswith("module.base_encoder.head.")}
    net = VisionTransformer(img_size=28, in_chans=1, num_classes=10, qkv_bias=True,
                            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), **FMNIST_VIT)
    msg = net.load_state_dict(sd, strict=False)
    assert set(msg.missing_keys) == {"head.weight", "head.bias"} and not msg.unexpected_keys
    net.head, base.head = torch.nn.Identity(), torch.nn.Identity()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), base(x), rtol=1e-5, atol=1e-5)


def test_the_lincls_file_of_a_vit_imports_as_its_backbone(tmp_path):
    path, base, _, _ = _original_v3_vit(tmp_path)
    sd = torch.load(path, weights_only=True)["state_dict"]
    only = {k: v for k, v in sd.items() if k.startswith("module.base_encoder.")}  # what main_lincls.py reads
    torch.save({"state_dict": only}, tmp_path / "base.pth.tar")
    summary = import_official(str(tmp_path / "base.pth.tar"), str(tmp_path / "backbone.pth"))
    assert summary["arch"] == "vit_fmnist" and summary["head"] == "not imported"
    net = build_backbone("vit_fmnist", 0, "", 1)
    net.load_state_dict(torch.load(tmp_path / "backbone.pth", weights_only=True))
    base.head = torch.nn.Identity()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), base(x), rtol=1e-5, atol=1e-5)


def _fake_folder(root, n=4, size=28):
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (size, size), (30 * i, 90 * c, 11 * i)).save(root / f"c{c}" / f"{i}.png")
    return str(root)


@pytest.mark.slow
def test_an_imported_vit_run_resumes_and_init_takes_its_backbone(tmp_path):
    path, base, _, _ = _original_v3_vit(tmp_path, channels=3)  # an ImageFolder's images are RGB
    run = tmp_path / "run"
    import_official(path, str(run))
    data = _fake_folder(tmp_path / "data")
    done = subprocess.run([sys.executable, "-m", "fastmoco.cli.train", "--resume", "auto", "--out", str(run),
                           "--data", data, "--batch-size", "4", "--epochs", "12", "--max-steps", "1",
                           "--warmup-epochs", "1", "--no-progress", "--workers", "0", "--loader", "torch"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stdout and "at epoch 8" in done.stdout  # the original saved epoch 7 done
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["position"]["step"] == 1 and state["config"]["arch"] == "vit_fmnist"
    cfg = TrainConfig(method="v3", arch="vit_fmnist", image_size=28, mlp_dim=16).resolved()
    model = build_method(cfg.for_runtime("cpu", 1), 3)
    init_backbone(model, str(tmp_path / "run"))  # the import after one step: its backbone is in both encoders
    trained, _, _ = load_backbone(str(run))
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder_k.backbone.eval()(x), trained.eval()(x), rtol=0, atol=0)
        assert not torch.allclose(trained(x), base.forward_features(x)[:, 0])  # one AdamW step changed it


def _vit_run(tmp_path):
    """A fastmoco ViT run directory written without training (an import)."""
    path, *_ = _original_v3_vit(tmp_path)
    import_official(path, str(tmp_path / "run"))
    return str(tmp_path / "run")


def test_timm_export_loads_into_timm_create_model_with_the_same_outputs(tmp_path):
    run = _vit_run(tmp_path)
    out, call = timm_export(run, str(tmp_path / "timm.pth"))
    assert call == ("timm.create_model('vit_small_patch16_224', num_classes=0, in_chans=1, img_size=28, "
                    "patch_size=4, embed_dim=96, depth=4, num_heads=3)")
    net = eval(call, {"timm": timm})
    net.load_state_dict(torch.load(out, weights_only=True))  # strict: every key, pos_embed included
    ours, _, _ = load_backbone(run)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), ours.eval()(x), rtol=1e-5, atol=1e-5)


def test_vit_small_is_timms_vit_s16_with_12_heads(tmp_path):
    from fastmoco.convert.vit_layout import add_pos_embed, timm_kwargs

    torch.manual_seed(0)
    ours = build_backbone("vit_small", 0, "", 3).eval()
    name, kw = timm_kwargs("vit_small", 3, 224)
    net = timm.create_model(name, **kw).eval()
    assert net.blocks[0].attn.num_heads == 12
    net.load_state_dict(add_pos_embed(ours.state_dict(), 224, 16, 384))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ours(x), rtol=1e-4, atol=1e-4)


def test_timm_export_of_a_resnet_run(tmp_path):
    from test_convert import _official

    path, net = _official(tmp_path, arch="resnet18", version="v2")
    import_official(path, str(tmp_path / "run"))
    out, call = timm_export(str(tmp_path / "run"), str(tmp_path / "timm.pth"))
    assert call == "timm.create_model('resnet18', num_classes=0)"
    theirs = eval(call, {"timm": timm})
    theirs.load_state_dict(torch.load(out, weights_only=True))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(theirs.eval()(x), net(x), rtol=1e-5, atol=1e-5)


def _saved(tmp_path, name, sd):
    torch.save({"epoch": 1, "state_dict": sd}, tmp_path / name)
    return str(tmp_path / name)


def test_bad_vit_checkpoints_are_one_line_errors(tmp_path):
    path, *_ = _original_v3_vit(tmp_path)
    sd = torch.load(path, weights_only=True)["state_dict"]
    learned = dict(sd, **{"module.base_encoder.pos_embed": torch.randn(1, 50, 96)})
    with pytest.raises(ConvertError, match="base_encoder.pos_embed is not the fixed 2-D sin-cos embedding"):
        import_official(_saved(tmp_path, "learned.pth", learned), str(tmp_path / "r1"))
    deeper = dict(sd, **{k.replace("blocks.3.", "blocks.4."): v for k, v in sd.items() if "blocks.3." in k})
    with pytest.raises(ConvertError, match=r"a ViT fastmoco cannot build \(patch 4, width 96, depth 5\)"):
        import_official(_saved(tmp_path, "deeper.pth", deeper), str(tmp_path / "r2"))
    odd = {"module.base_encoder.stem.weight": torch.zeros(1), "module.base_encoder.fc.0.weight": torch.zeros(2, 2),
           "module.momentum_encoder.stem.weight": torch.zeros(1), "module.predictor.0.weight": torch.zeros(2, 2)}
    with pytest.raises(ConvertError, match=r"neither a ResNet \(conv1.weight\) nor a ViT .* start stem.weight"):
        import_official(_saved(tmp_path, "odd.pth", odd), str(tmp_path / "r3"))
    assert not any((tmp_path / r).exists() for r in ("r1", "r2", "r3"))  # nothing written
    done = subprocess.run([sys.executable, "-m", "fastmoco.cli.convert", "import", str(tmp_path / "deeper.pth"),
                           str(tmp_path / "r4")], capture_output=True, text=True)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "depth 5" in done.stderr
