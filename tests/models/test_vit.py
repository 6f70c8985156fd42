"""ViT backbones (timm's VisionTransformer as MoCo v3 builds it) and any timm model: the fixed position embedding
against a hand computation, the original's init, the frozen patch projection, the class-token feature, compile,
the memory pre-flight's attention term, and a v3 ViT step on two gloo ranks."""
import math

import pytest
import torch
from torch import nn

from fastmoco.models import build_backbone, build_method, sincos_2d
from fastmoco.runs.config import ConfigError, TrainConfig


def _hand_sincos(h, w, dim, temperature=1e4):
    """The original's formula, one entry at a time: token k of the row-major grid gets grid_w = k // h and
    grid_h = k % h (its meshgrid(grid_w, grid_h) flattened)."""
    q = dim // 4
    rows = []
    for k in range(h * w):
        gw, gh = k // h, k % h
        omega = [1.0 / temperature ** (i / q) for i in range(q)]
        rows.append([math.sin(gw * o) for o in omega] + [math.cos(gw * o) for o in omega]
                    + [math.sin(gh * o) for o in omega] + [math.cos(gh * o) for o in omega])
    return torch.tensor(rows)


@pytest.mark.parametrize("h, w, dim", [(3, 3, 8), (2, 4, 12), (7, 7, 96)])
def test_position_embedding_equals_the_hand_computation(h, w, dim):
    torch.testing.assert_close(sincos_2d(h, w, dim), _hand_sincos(h, w, dim), atol=1e-6, rtol=0)


def test_position_embedding_needs_a_width_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(2, 2, 6)


def test_the_original_init_and_the_frozen_patch_projection():
    torch.manual_seed(0)
    net = build_backbone("vit_small", 0, "", 3)
    qkv = net.blocks[0].attn.qkv.weight  # (3*384, 384)
    bound = math.sqrt(6 / (qkv.shape[0] // 3 + qkv.shape[1]))
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.95 * bound  # uniform(-bound, bound)
    fc = net.blocks[0].mlp.fc1.weight  # xavier: bound sqrt(6 / (in + out))
    xb = math.sqrt(6 / (fc.shape[0] + fc.shape[1]))
    assert fc.abs().max() <= xb and fc.abs().max() > 0.95 * xb
    assert all(torch.all(m.bias == 0) for m in net.modules() if isinstance(m, nn.Linear))
    assert 0 < net.cls_token.std() < 3e-6
    proj = net.patch_embed.proj
    pb = math.sqrt(6 / (3 * 16 * 16 + 384))
    assert proj.weight.abs().max() <= pb and torch.all(proj.bias == 0)
    assert not proj.weight.requires_grad and not proj.bias.requires_grad
    assert build_backbone("vit_small", 0, "", 3, freeze_patch_embed=False).patch_embed.proj.weight.requires_grad
    assert not any("pos_embed" in n for n, _ in net.named_parameters())  # fixed, not a parameter


def test_the_feature_is_the_class_token_after_the_final_norm():
    net = build_backbone("vit_fmnist", 0, "", 1).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        tokens = net.patch_embed(x)  # (2, 7, 7, 96)
        t = tokens.reshape(2, 49, 96) + sincos_2d(7, 7, 96)
        t = torch.cat([net.cls_token.expand(2, -1, -1), t], dim=1)
        t = net.norm(net.blocks(t))
        torch.testing.assert_close(net(x), t[:, 0], rtol=0, atol=1e-6)
        assert net(x).shape == (2, 96) and net(torch.randn(2, 1, 36, 36)).shape == (2, 96)  # any multiple of 4


def _vit_v3(**kw):
    cfg = TrainConfig(method="v3", arch="vit_fmnist", image_size=28, mlp_dim=32, dim=16, epochs=50, **kw).resolved()
    return build_method(cfg.for_runtime("cpu", 1), 1), cfg


def test_v3_vit_layout_and_steps_keep_the_patch_projection_frozen():
    torch.manual_seed(0)
    model, cfg = _vit_v3()
    assert (cfg.preset, cfg.optimizer, cfg.proj_layers, cfg.pred_last_bn, cfg.T) == ("fmnist-v3-vit", "adamw", 3, True,
                                                                                    0.2)
    big = TrainConfig(method="v3", arch="vit_small").resolved()  # the paper's recipe for the paper's ViTs
    assert (big.preset, big.lr, big.lr_ref_batch, big.warmup_epochs, big.epochs, big.weight_decay) == \
        ("v3-vit", 1.5e-4, 256, 40.0, 300, 0.1)
    assert [type(m) for m in model.predictor][-1] is nn.BatchNorm1d and len(model.encoder_q.head) == 8
    from fastmoco.train.optim import build_optimizer

    opt = build_optimizer(cfg, model.query_network().parameters(), 1e-3)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.1
    proj = model.backbone.patch_embed.proj
    before, other = proj.weight.clone(), model.backbone.blocks[0].attn.qkv.weight.clone()
    for _ in range(2):
        loss, _ = model(torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28))
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.after_step(None, 0.99)
    assert proj.weight.grad is None and torch.equal(proj.weight, before)
    assert torch.equal(model.encoder_k.backbone.patch_embed.proj.weight, before)
    assert not torch.equal(model.backbone.blocks[0].attn.qkv.weight, other)


def test_v3_vit_forward_traces_as_one_graph():
    model, _ = _vit_v3()
    explained = torch._dynamo.explain(model)(torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_the_memory_preflight_counts_attention():
    from fastmoco.train.preflight import check_image_size, estimate_bytes

    _, cfg = _vit_v3(batch_size=64)
    cfg = cfg.for_runtime("cpu", 1)
    parts = estimate_bytes(cfg, 1, 28)
    tokens = 7 * 7 + 1
    attention = 64 * 2 * tokens ** 2 * 3 * 4 * 4  # batch x views x T^2 x heads x depth x fp32
    bigger = estimate_bytes(cfg, 1, 56)["activations"]  # 4x the patches: attention grows with T^2
    assert parts["activations"] > attention and bigger - 4 * parts["activations"] > 0
    with pytest.raises(ConfigError, match="not a multiple of vit_fmnist's patch size 4"):
        check_image_size(cfg, 30)


def test_any_timm_model_is_a_backbone():
    net = build_backbone("timm:resnet18", 0, "", 1)
    assert net.feat_dim == 512 and net(torch.randn(2, 1, 32, 32)).shape == (2, 512)
    with pytest.raises(ValueError, match="timm:no_such_net"):
        build_backbone("timm:no_such_net", 0, "", 3)
    with pytest.raises(ConfigError, match="unknown arch 'vit_huge'"):
        TrainConfig(arch="vit_huge").resolved()


def test_timm_backbones_get_the_split_bn_guard_or_a_one_line_refusal():
    from fastmoco.models import SplitBatchNorm2d
    from fastmoco.train.preflight import check_image_size

    torch.manual_seed(0)
    plain = build_backbone("timm:resnet10t", 0, "", 1)
    torch.manual_seed(0)
    split = build_backbone("timm:resnet10t", 0, "", 1, bn_splits=4)
    bns = [m for m in plain.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) > 5 and sum(isinstance(m, SplitBatchNorm2d) for m in split.modules()) == len(bns)
    assert not any(type(m) is nn.BatchNorm2d for m in split.modules())
    a, b = plain.state_dict(), split.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # timm's names: exports still load
    x = torch.randn(8, 1, 32, 32)
    # each split (every 4th sample, as SplitBatchNorm2d groups them) is normalised by its own statistics: the split
    # net on the whole batch equals the plain net on each split alone
    want = torch.empty(8, split.feat_dim)
    for j in range(4):
        want[j::4] = plain.train()(x[j::4])
    torch.testing.assert_close(split.train()(x), want, atol=1e-5, rtol=1e-5)
    assert TrainConfig(arch="timm:resnet10t").resolved().for_runtime("cpu", 1).bn_splits == 8
    assert TrainConfig(arch="timm:vit_tiny_patch16_224").resolved().for_runtime("cpu", 1).bn_splits == 1  # no BN
    with pytest.raises(ValueError, match=r"^--bn-splits 8: timm:efficientnet_b0's bn1 is a BatchNormAct2d, a "
                                         r"BatchNorm that Split-BN cannot stand in for; pass --bn-splits 1"):
        build_backbone("timm:efficientnet_b0", 0, "", 3, bn_splits=8)
    with pytest.raises(ValueError, match="has no BatchNorm2d to split"):
        build_backbone("timm:vit_tiny_patch16_224", 0, "", 3, bn_splits=2)
    cfg = TrainConfig(arch="timm:vit_tiny_patch16_224").resolved()
    with pytest.raises(ConfigError, match=r"^image size 36 does not fit timm:vit_tiny_patch16_224 \(Input height "
                                          r"\(36\) doesn't match model \(224\)\); it was built for 224 px: use "
                                          r"--image-size 224$"):
        check_image_size(cfg, 36)
    check_image_size(cfg, 224)


@pytest.mark.slow
def test_a_v3_vit_run_trains_exports_and_its_extractor_matches(tmp_path):
    """A tiny v3 ViT run on Fashion-MNIST end to end: training, kNN, the torch.export extractor (class token)."""
    import os

    from helpers import FMNIST_DIR
    from fastmoco.train import train
    from fastmoco.runs.read import load_backbone
    from fastmoco.convert.extractor import export_run, load_extractor

    if not os.path.isdir(FMNIST_DIR):
        pytest.skip("apt-get install dataset-fashion-mnist")
    out = tmp_path / "vit"
    summary = train(TrainConfig(method="v3", arch="vit_fmnist", image_size=28, subset=512, batch_size=32,
                                mlp_dim=32, epochs=1, warmup_epochs=0.5, progress=False, knn_k=10,
                                out=str(out)).resolved(), log=lambda *_: None)
    assert summary["knn_top1"] is not None
    paths = export_run(str(out))
    backbone, _, _ = load_backbone(str(out))
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        expect = backbone.eval()((x - 0.2860) / 0.3530)
    torch.testing.assert_close(load_extractor(paths["features"])(x), expect, atol=1e-5, rtol=1e-5)
