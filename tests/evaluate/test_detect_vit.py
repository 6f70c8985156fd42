"""ViT backbones in fastmoco-detect: the simple feature pyramid (ViTDet) over a ViT's last patch map."""
import os

import pytest
import torch

from helpers import needs_fmnist
from processes import spawn
from fastmoco.errors import ConfigError
from fastmoco.evaluate.detection import run_detect
from fastmoco.evaluate.detection.source import load_source
from fastmoco.models import build_backbone, build_detector
from fastmoco.models.detection import SimplePyramid
from fastmoco.models.vit import pos_embed_table

from test_detect import _settings, _tiny_set


@pytest.mark.parametrize("arch,strides,channels", [
    ("vit_fmnist", [2, 4, 8, 16, 32], [48, 96, 96, 96]),  # patch 4: no level below stride 2
    ("vit_small", [4, 8, 16, 32, 64], [96, 192, 384, 384]),  # patch 16: ViTDet's 1/4 .. 1/32
])
def test_the_pyramid_levels_follow_the_patch_size(arch, strides, channels):
    vit = build_backbone(arch, 0, "", 3, freeze_patch_embed=False)
    pyramid = SimplePyramid(vit, 24).eval()
    assert pyramid.strides == strides
    got = [next(m for m in head.modules() if isinstance(m, torch.nn.Conv2d)).in_channels for head in pyramid.heads]
    assert got == channels
    side = 64 if arch == "vit_fmnist" else 128
    with torch.no_grad():
        feats = pyramid(torch.randn(2, 3, side, side))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    for f, s in zip(feats.values(), strides):
        assert f.shape == (2, 24, side // s, side // s)


def test_the_patch_map_is_the_vits_own_tokens_at_any_input_size():
    vit = build_backbone("vit_fmnist", 0, "", 1).eval()
    x = torch.randn(1, 1, 32, 48)  # not square, not the size it was built for
    with torch.no_grad():
        fmap = SimplePyramid(vit, 16).patch_map(x)  # (1, 96, 8, 12)
        tokens = vit.forward_features(x)  # (1, 1 + 96, 96)
    assert fmap.shape == (1, 96, 8, 12)
    assert torch.equal(fmap.flatten(2).transpose(1, 2), tokens[:, 1:])


def _vit_state(tmp_path, name, change=0.0, pos=True):
    vit = build_backbone("vit_fmnist", 0, "", 1)
    sd = {k: v.clone() for k, v in vit.state_dict().items()}
    sd["blocks.0.mlp.fc1.weight"] += change
    if pos:  # as timm and the original MoCo v3 store it: the sin-cos table for 28 px (7 x 7 patches)
        sd["pos_embed"] = pos_embed_table(7, 7, 96)
    sd["head.weight"] = torch.zeros(10, 96)  # a classifier beside the backbone is left out
    torch.save(sd, tmp_path / name)
    return vit


def test_a_vit_state_dict_is_really_loaded_and_every_layer_trains(tmp_path):
    vit = _vit_state(tmp_path, "a.pt")
    _vit_state(tmp_path, "b.pt", change=0.5)
    x = torch.randn(2, 1, 32, 32)
    outs = []
    for name in ("a.pt", "b.pt"):
        b = load_source(str(tmp_path / name), "resnet10", 8, None, 1)
        assert b.in_channels == 1 and "vit_fmnist" in b.described
        det = build_detector(b.resnet, b.stem, 5, image_size=32, mean=(0.5,), std=(0.25,), fpn_channels=16).eval()
        assert all(p.requires_grad for p in det.backbone.body.parameters())  # the patch projection too
        with torch.no_grad():
            outs.append(det.backbone(x)["2"])
    with torch.no_grad():
        loaded = load_source(str(tmp_path / "a.pt"), "resnet10", 8, None, 1).resnet.eval()
        assert torch.equal(loaded(x), vit.eval()(x))
    assert not torch.allclose(outs[0], outs[1])


def test_a_learned_position_table_and_a_timm_cnn_are_one_line_errors(tmp_path):
    _vit_state(tmp_path, "learned.pt")
    sd = torch.load(tmp_path / "learned.pt")
    sd["pos_embed"] = torch.randn(1, 50, 96)
    torch.save(sd, tmp_path / "learned.pt")
    with pytest.raises(ConfigError, match=r"learned.pt: .*pos_embed is not the fixed 2-D sin-cos embedding"):
        load_source(str(tmp_path / "learned.pt"), "resnet10", 8, None, 1)
    with pytest.raises(ConfigError, match=r"^random: the detector wraps fastmoco's ResNets .* and ViTs .*, not "
                                          r"'timm:resnet10t'"):
        load_source("random", "timm:resnet10t", 8, None, 1)


@needs_fmnist()
def test_fine_tunes_from_a_v3_vit_run(tmp_path):
    from fastmoco.train import TrainConfig, train

    run = str(tmp_path / "run")
    train(TrainConfig(method="v3", arch="vit_fmnist", subset=256, batch_size=64, epochs=1, mlp_dim=32,
                      progress=False, out=run, warmup_epochs=0.0).resolved(), log=lambda *_: None)
    paths = _tiny_set(str(tmp_path / "data"))
    said = []
    res = run_detect(run, _settings(paths, None, epochs=1, show=0), log=said.append)
    assert said[0].startswith(f"fine-tuning maskrcnn (bn) from {run}: v3 vit_fmnist patch 4")
    assert set(res) >= {"bbox_AP", "segm_AP"}


def _vit_detect_worker(rank, world, port, results, paths, out):
    from processes import join_env

    join_env(rank, world, port)
    res = run_detect("random", _settings(paths, out, epochs=1, show=0, arch="vit_fmnist"), log=lambda *_: None)
    results[rank] = dict(res=res, state=torch.load(os.path.join(out, "last.pt"), weights_only=True)["model"]
                         if rank == 0 else None)


@pytest.mark.slow
def test_two_processes_fine_tune_a_vit_detector(tmp_path):
    paths = _tiny_set(str(tmp_path / "data"))
    two = spawn(_vit_detect_worker, paths, str(tmp_path / "two"))
    assert set(two[0]["res"]) >= {"bbox_AP", "segm_AP"} and two[1]["res"] == {}
    assert any(k.startswith("backbone.body.blocks.") for k in two[0]["state"])


def _vit_detector():
    vit = build_backbone("vit_fmnist", 16, "small-s2", 1, 1)
    return build_detector(vit, "small-s2", 5, image_size=32, mean=(0.5,), std=(0.25,), fpn_channels=16)


def test_layer_wise_lr_decay_scales_each_block_by_its_depth():
    from fastmoco.models.detection import lr_groups

    det = _vit_detector()
    scale = {id(p): g["lr_scale"] for g in lr_groups(det, 0.5) for p in g["params"]}
    trained = [(n, p) for n, p in det.named_parameters() if p.requires_grad]
    assert sorted(scale) == sorted(id(p) for _, p in trained)  # every trained parameter in exactly one group
    depth = len(det.backbone.body.blocks)  # 4
    for name, p in trained:
        if name.startswith("backbone.body.blocks."):
            i = int(name.split(".")[3])
            assert scale[id(p)] == 0.5 ** (depth - i), name  # the last block 0.5, the first 0.5^4
        elif name.startswith(("backbone.body.patch_embed", "backbone.body.cls_token")):
            assert scale[id(p)] == 0.5 ** (depth + 1), name
        else:  # the final norm, the pyramid, the RPN and RoI heads
            assert scale[id(p)] == 1.0, name
    assert [g["lr_scale"] for g in lr_groups(det, 1.0)] == [1.0]  # off: one group, as without the option


def test_lr_decay_on_a_resnet_or_out_of_range_is_one_line(tmp_path):
    paths = _tiny_set(str(tmp_path / "data"))
    with pytest.raises(ConfigError, match="applies to ViT backbones"):
        run_detect("random", _settings(paths, None, epochs=1, show=0, lr_decay=0.7), log=lambda *_: None)
    with pytest.raises(ConfigError, match=r"--lr-decay must be in \(0, 1\]"):
        run_detect("random", _settings(paths, None, epochs=1, show=0, lr_decay=0.0), log=lambda *_: None)
    assert not os.path.exists(os.path.join(str(tmp_path), "detect-random", "last.pt"))


def test_each_step_trains_every_group_at_its_scaled_lr(tmp_path, monkeypatch):
    """A ViT fine-tuning with --lr-decay 0.5: at every step each group's lr is the schedule's lr times its scale
    (the warm-up included), and the weights differ from the undecayed run's."""
    paths = _tiny_set(str(tmp_path / "data"))
    seen, step = [], torch.optim.SGD.step

    def spy(opt, *a, **kw):
        seen.append([(g["lr"], g["lr_scale"]) for g in opt.param_groups])
        return step(opt, *a, **kw)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    final = {}
    for decay in (1.0, 0.5):
        seen.clear()
        out = str(tmp_path / f"d{decay}")
        run_detect("random", _settings(paths, out, epochs=1, show=0, arch="vit_fmnist", lr_decay=decay),
                   log=lambda *_: None)
        final[decay] = torch.load(os.path.join(out, "last.pt"), weights_only=True)["model"]
        assert seen and all(len({lr / scale for lr, scale in groups}) == 1 for groups in seen)
        assert {scale for _, scale in seen[0]} == ({1.0} if decay == 1.0 else {0.5 ** k for k in range(6)})
    patch = "backbone.body.patch_embed.proj.weight"
    assert not torch.allclose(final[1.0][patch], final[0.5][patch])
