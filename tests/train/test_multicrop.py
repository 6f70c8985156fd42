"""Multi-crop: the small views' configuration, crops, order in every loader, the loss over all (query, key) pairs,
and the preflight check of their size."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastmoco.data import TensorData, dali
from fastmoco.data.transforms import FMNIST_MEAN, FMNIST_STD, BatchAugment
from fastmoco.data.view_params import crop_boxes
from fastmoco.models import MoCo
from fastmoco.train import ConfigError, TrainConfig
from fastmoco.cli.train import config_from_args
from fastmoco.train.preflight import check_image_size

B = 8


# -- configuration --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,match", [
    (["--small-crops", "-1"], "small_crops must be >= 0"),
    (["--small-crop-size", "-4"], "small_crop_size must be >= 0"),
    (["--small-crop-scale", "0.5"], "small_crop_scale must be two fractions"),
    (["--small-crop-scale", "0.1,x"], "small_crop_scale must be two fractions"),
    (["--small-crop-scale", "0.5,0.2"], "0 < min <= max <= 1"),
    (["--small-crop-scale", "0,0.2"], "0 < min <= max <= 1"),
    (["--small-crop-scale", "0.2,1.5"], "0 < min <= max <= 1"),
])
def test_invalid_small_crop_settings_are_one_line_errors(argv, match):
    with pytest.raises(ConfigError, match=match):
        config_from_args(argv)


def test_small_crop_size_defaults_to_half_the_training_size():
    assert TrainConfig().resolved().small_size(36) == 0  # off by default
    assert TrainConfig(small_crops=2).resolved().small_size(36) == 18
    assert TrainConfig(small_crops=2).resolved().small_size(224) == 112
    assert TrainConfig(small_crops=2, small_crop_size=20).resolved().small_size(36) == 20
    assert TrainConfig(small_crops=2).resolved().small_crop_range() == (0.05, 0.14)  # SwAV's small-crop range


def test_small_crops_below_the_networks_stride_are_refused():
    cfg = TrainConfig(small_crops=2, small_crop_size=8).resolved()  # stem small-s2: total stride 16
    with pytest.raises(ConfigError, match="small crop size 8 is smaller than the network's total stride 16.*"
                                          "--small-crop-size >= 16"):
        check_image_size(cfg, 8, "--small-crop-size")


# -- the crops ------------------------------------------------------------------------------------------------
def test_batched_crops_cover_the_asked_area_range():
    lo, hi = 0.05, 0.14
    aug = BatchAugment("v2", 16, FMNIST_MEAN, FMNIST_STD, lo, max_scale=hi)
    theta = aug.crop_maps(4000, torch.Generator().manual_seed(0))  # (4000, 2, 3)
    area = theta[:, 0, 0].abs() * theta[:, 1, 1]  # crop width x height, as fractions of the image's
    assert float(area.min()) >= lo - 1e-6 and float(area.max()) <= hi + 1e-6
    assert float(area.min()) < lo + 0.005 and float(area.max()) > hi - 0.005  # the whole range is drawn
    full = BatchAugment("v2", 16, FMNIST_MEAN, FMNIST_STD, 0.9).crop_maps(4000, torch.Generator().manual_seed(0))
    assert float((full[:, 0, 0].abs() * full[:, 1, 1]).min()) > 0.5  # max_scale defaults to the whole image


def test_dali_crop_boxes_cover_the_asked_area_range():
    rng = np.random.default_rng(0)
    hw = np.array([[224, 224]]).repeat(4000, 0)
    top, left, h, w = crop_boxes(rng, hw, 0.05, max_scale=0.14).T
    area = h * w / 224 ** 2
    assert area.min() >= 0.05 - 0.01 and area.max() <= 0.14 + 0.01  # within the pixel rounding of the box
    assert area.min() < 0.055 and area.max() > 0.135
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 224).all() and (left + w <= 224).all()


# -- the loaders: the small views of image i are rows j*B + i, after both views, which stay as they were ------
LEVELS = torch.arange(0, 240, 10, dtype=torch.uint8)  # (24,) one grey level per image


def _level_data(loader, small_crops):
    """24 solid grey images through the v1 recipe at jitter 0: every view of image i is its level."""
    cfg = TrainConfig(batch_size=B, bn_splits=1, aug="v1", jitter=0.0, erase_p=0.0, image_size=16, loader=loader,
                      workers=1, small_crops=small_crops, small_crop_size=12).resolved()
    images = LEVELS.view(-1, 1, 1, 1).expand(-1, 1, 28, 28).contiguous()  # (24, 1, 28, 28)
    labels = torch.zeros(len(images), dtype=torch.long)
    return TensorData(cfg, "cpu", images, labels, images, labels, loader=loader)


def _level_of(v):
    return [int(round(float(p))) for p in (v.mean(dim=(1, 2, 3)) * FMNIST_STD[0] + FMNIST_MEAN[0]) * 255]


@pytest.mark.parametrize("loader", ["torch", pytest.param("dali", marks=pytest.mark.skipif(
    not dali.available(), reason="NVIDIA DALI is not installed"))])
def test_small_views_follow_their_images_crop_major_in_both_loaders(loader):
    data = _level_data(loader, small_crops=3)
    plain = list(_level_data(loader, small_crops=0).epoch(0))
    batches = list(data.epoch(0))
    assert len(batches) == len(plain) == 3
    for (v1, v2, small), (p1, p2), (_, idx) in zip(batches, plain, data.plan(0)):
        assert v1.shape == v2.shape == (B, 1, 16, 16) and small.shape == (3 * B, 1, 12, 12)
        assert torch.equal(v1, p1) and torch.equal(v2, p2)  # the small views are drawn after both views
        expected = [int(LEVELS[i]) for i in idx]
        assert _level_of(small) == expected * 3  # crop-major: small view j of image i at row j*B + i


def test_small_views_are_different_crops_of_each_image():
    cfg = TrainConfig(batch_size=B, bn_splits=1, image_size=16, small_crops=2, small_crop_size=12).resolved()
    x = torch.arange(28 * 28, dtype=torch.float32).view(1, 1, 28, 28).expand(B, 1, 28, 28)  # a ramp image
    images = (x / x.max() * 255).to(torch.uint8)
    labels = torch.zeros(B, dtype=torch.long)
    (v1, _, small), = list(TensorData(cfg, "cpu", images, labels, images, labels).epoch(0))
    a, b = small[:B], small[B:]  # (B, 1, 12, 12) each: the two small views
    assert all(not torch.equal(a[i], b[i]) for i in range(B))


# -- the loss: the mean over every (query, key of another view) pair ----------------------------------------
def _moco(**kw):
    cfg = TrainConfig(width=4, K=32, batch_size=B, bn_splits=1, dim=16, **kw).resolved()
    torch.manual_seed(0)
    return MoCo.from_config(cfg, in_channels=1).double()


def _nce(q, k, queue, T):
    """Cross-entropy of [q.k, q.queue] / T against label 0, row by row in float64."""
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], dim=1) / T  # (n, 1+K)
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long), reduction="none")  # (n,)


@pytest.mark.parametrize("symmetric", [False, True])
def test_multi_crop_loss_is_the_mean_over_every_query_key_pair(symmetric):
    model = _moco(symmetric=symmetric, ops="reference")
    g = torch.Generator().manual_seed(1)
    x1, x2 = (torch.randn(B, 1, 16, 16, generator=g, dtype=torch.float64) for _ in range(2))
    small = torch.randn(2 * B, 1, 12, 12, generator=g, dtype=torch.float64)  # (2B, 1, 12, 12)
    loss, keys = model(x1, x2, small=small)

    enc, T, queue = model.encoder_q, model.T, model.queue
    with torch.no_grad():  # plain BN: the keys do not depend on the shuffle's permutation
        k2, k1 = model.keys(x2), model.keys(x1)
        qs = F.normalize(enc(small), dim=1)  # (2B, dim)
        if symmetric:
            q1, q2 = F.normalize(enc(torch.cat([x1, x2])), dim=1).chunk(2)
            rows = [_nce(q1, k2, queue, T), _nce(q2, k1, queue, T),
                    _nce(qs, torch.cat([k2, k2]), queue, T), _nce(qs, torch.cat([k1, k1]), queue, T)]
            want_keys = torch.cat([k2, k1])
        else:
            q1 = F.normalize(enc(x1), dim=1)
            rows = [_nce(q1, k2, queue, T), _nce(qs, torch.cat([k2, k2]), queue, T)]
            want_keys = k2
    expected = torch.cat(rows).mean()  # every query row weighs the same
    torch.testing.assert_close(loss, expected, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(keys, want_keys, atol=1e-10, rtol=1e-10)  # small views are never queued
    loss.backward()
    assert all(p.grad is not None for p in model.encoder_q.parameters())


def test_without_small_views_the_loss_is_unchanged():
    model = _moco(ops="reference")
    g = torch.Generator().manual_seed(2)
    x1, x2 = (torch.randn(B, 1, 16, 16, generator=g, dtype=torch.float64) for _ in range(2))
    loss, k = model(x1, x2)
    with torch.no_grad():
        expected = _nce(F.normalize(model.encoder_q(x1), dim=1), k, model.queue, model.T).mean()
    torch.testing.assert_close(loss, expected, atol=1e-10, rtol=1e-10)


def test_small_views_leave_the_bn_running_statistics_of_the_full_views():
    cfg = TrainConfig(width=4, K=32, batch_size=B, bn_splits=2, dim=16).resolved()  # Split-BN in the encoders
    torch.manual_seed(0)
    model = MoCo.from_config(cfg, in_channels=1)
    g = torch.Generator().manual_seed(3)
    x1, x2 = (torch.randn(B, 1, 16, 16, generator=g) for _ in range(2))
    small = 3 + torch.randn(2 * B, 1, 12, 12, generator=g)  # other statistics than the full views'
    plain, multi = copy.deepcopy(model), copy.deepcopy(model)
    plain(x1, x2)
    multi(x1, x2, small=small)
    before, want = dict(model.encoder_q.named_buffers()), dict(plain.encoder_q.named_buffers())
    for name, b in multi.encoder_q.named_buffers():
        assert torch.equal(b, want[name]), name
        assert not name.endswith("running_mean") or not torch.equal(b, before[name])  # the full views updated them
