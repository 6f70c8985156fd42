import pytest
import torch
import torchvision

from fastmoco.models import MoCo, SplitBatchNorm2d, WideResNet, build_backbone
from fastmoco.runs.config import TrainConfig
from fastmoco.runs.read import backbone_state_dict


def _moco(**kw):
    cfg = TrainConfig(width=4, K=32, batch_size=8, bn_splits=2, **kw).resolved()
    return MoCo.from_config(cfg, in_channels=1)


def test_width_64_imagenet_stem_is_torchvision_resnet():
    for arch in ("resnet18", "resnet50"):
        ours = WideResNet(arch, 64, "imagenet", 3)
        tv = getattr(torchvision.models, arch)()
        missing, unexpected = tv.load_state_dict(ours.state_dict(), strict=False)
        assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
        assert ours.feat_dim == tv.fc.in_features


def test_moco_state_dict_keys_export_to_torchvision():
    cfg = TrainConfig(arch="resnet18", width=64, stem="imagenet", K=16, bn_splits=1).resolved()
    sd = backbone_state_dict(MoCo.from_config(cfg, in_channels=3).state_dict())
    missing, unexpected = torchvision.models.resnet18().load_state_dict(sd, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected


@pytest.mark.parametrize("stem,size,out", [("small", 28, 512), ("small-s2", 28, 512), ("imagenet", 64, 512)])
def test_backbone_stems(stem, size, out):
    net = build_backbone("resnet18", 64, stem, 1)
    assert net(torch.randn(2, 1, size, size)).shape == (2, out)


def test_split_bn_equals_per_split_bn_and_plain_bn_in_eval():
    torch.manual_seed(0)
    sbn, bn = SplitBatchNorm2d(3, num_splits=2), torch.nn.BatchNorm2d(3)
    x = torch.randn(8, 3, 4, 4)
    y = sbn(x)
    for part in range(2):  # split `part` = samples part, part + 2, ... normalised by their own statistics
        sl = x.view(4, 2, 3, 4, 4)[:, part]
        expect = (sl - sl.mean((0, 2, 3), keepdim=True)) / torch.sqrt(sl.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5)
        torch.testing.assert_close(y.view(4, 2, 3, 4, 4)[:, part], expect, atol=1e-5, rtol=1e-5)
    sbn.eval()
    bn.load_state_dict(sbn.state_dict())
    bn.eval()
    torch.testing.assert_close(sbn(x), bn(x))


def test_forward_backward_only_query_encoder_gets_gradients():
    model = _moco()
    loss, keys = model(torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28))
    loss.backward()
    assert keys.shape == (8, 128) and not keys.requires_grad
    assert torch.allclose(keys.norm(dim=1), torch.ones(8))
    assert all(p.grad is not None for p in model.encoder_q.parameters())
    assert all(p.grad is None and not p.requires_grad for p in model.encoder_k.parameters())


@pytest.mark.parametrize("ops_impl", ["fused", "reference"])
def test_fused_and_reference_paths_agree(ops_impl):
    torch.manual_seed(1)
    model = _moco(ops=ops_impl)
    x1, x2 = torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28)
    torch.manual_seed(2)
    loss, _ = model(x1, x2)
    model.ops_impl = "reference" if ops_impl == "fused" else "fused"
    torch.manual_seed(2)
    other, _ = model(x1, x2)
    torch.testing.assert_close(loss, other, atol=1e-5, rtol=1e-5)


def test_momentum_update_and_enqueue_semantics():
    model = _moco()
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(1.0)
    k_before = [p.clone() for p in model.encoder_k.parameters()]
    model.momentum_update(0.9)
    for pk, pq, kb in zip(model.encoder_k.parameters(), model.encoder_q.parameters(), k_before):
        torch.testing.assert_close(pk, 0.9 * kb + 0.1 * pq)
    keys = torch.randn(12, 128)
    model.ptr.fill_(25)
    model.enqueue(keys)
    assert torch.equal(model.queue[25:32], keys[:7]) and torch.equal(model.queue[:5], keys[7:])
    assert model.ptr.item() == 5
    sd = model.state_dict()
    assert "queue" in sd and "ptr" in sd and sd["ptr"].dtype == torch.int64


def test_bn_buffers_ema_option():
    model = _moco(ema_bn_buffers=True)
    bq = next(m for m in model.encoder_q.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bk = next(m for m in model.encoder_k.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bq.running_mean.fill_(1.0)
    bk.running_mean.zero_()
    model.momentum_update(0.5)
    assert torch.allclose(bk.running_mean, torch.full_like(bk.running_mean, 0.5))


def test_symmetric_loss_enqueues_both_views():
    model = _moco(symmetric=True)
    loss, keys = model(torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28))
    assert keys.shape == (16, 128) and loss.ndim == 0


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="unknown arch"):
        build_backbone("vgg", 8, "small", 1)
    with pytest.raises(ValueError, match="K must be >= 1"):
        MoCo(torch.nn.Identity(), 4, K=0)


def test_autocast_bf16_step_runs_and_queue_stays_fp32():
    model = _moco()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, keys = model(torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28))
    loss.backward()
    model.enqueue(keys)
    assert torch.isfinite(loss) and model.queue.dtype == torch.float32 and model.ptr.item() == 8
