"""The training semantics, each against exact expected values: the order of a step and what it leaves behind, the
schedules, Split-BN's wiring and statistics, the kNN weighting, and the pairing of the two views."""
import copy
import math

import pytest
import torch
from torch import nn

from helpers import FMNIST_DIR, needs_fmnist
from fastmoco.data import TensorData
from fastmoco.models import MoCo, SplitBatchNorm2d, build_backbone
from fastmoco.train import TrainConfig, train
from fastmoco.runs.distributed import ProcessGroup
from fastmoco.evaluate.knn import knn_predict
from fastmoco.train.schedules import lr_factor, momentum_at
from fastmoco.train.step import MocoStep


def _tiny(**kw):
    cfg = TrainConfig(**{"width": 4, "K": 64, "batch_size": 8, "bn_splits": 1, "m": 0.9, **kw}).resolved()
    return cfg.for_runtime("cpu", 1)


# -- 1. one step: optimizer step, then the EMA of the key encoder, then the enqueue ------------------------------
def test_one_step_leaves_the_ema_of_old_key_and_new_query_weights_and_queues_old_keys():
    cfg = _tiny()
    model = MoCo.from_config(cfg, 1)
    with torch.no_grad():  # a key encoder different from the query encoder, so the EMA's inputs are told apart
        for p in model.encoder_k.parameters():
            p.add_(0.05)
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=0.1, momentum=0.0)
    step = MocoStep(model, opt, cfg, ProcessGroup())
    v1, v2 = torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28)
    before = copy.deepcopy(model)
    with torch.no_grad():  # plain BN: the keys do not depend on the shuffle's permutation
        old_keys = before.keys(v2)  # (8, dim) from the key encoder *before* the update
    step([(v1, v2)], momentum=0.9)
    for (name, k_new), k_old, q_new in zip(model.encoder_k.named_parameters(), before.encoder_k.parameters(),
                                           model.encoder_q.parameters()):
        torch.testing.assert_close(k_new, 0.9 * k_old + 0.1 * q_new, atol=1e-6, rtol=1e-6, msg=name)
    q_changed = [not torch.equal(a, b) for a, b in zip(model.encoder_q.parameters(), before.encoder_q.parameters())]
    assert all(q_changed)  # the optimizer stepped every query parameter before the EMA read them
    torch.testing.assert_close(model.queue[:8], old_keys, atol=1e-6, rtol=1e-6)
    assert torch.equal(model.queue[8:], before.queue[8:]) and model.ptr.item() == 8


# -- 2. schedules ---------------------------------------------------------------------------------------------
def test_lr_warmup_then_cosine_exact_values_monotone_and_never_zero():
    epochs, warmup, dt = 10.0, 2.0, 0.25  # 4 steps per epoch
    f = lambda t: lr_factor(t, dt, epochs, warmup, "cosine", [])  # noqa: E731
    assert f(0.0) == pytest.approx(dt / warmup)  # the first step already learns
    assert f(1.0) == pytest.approx(1.25 / 2.0)
    assert f(1.75) == pytest.approx(1.0)  # the last warm-up step reaches the base lr
    assert f(2.0) == pytest.approx(1.0)  # cosine starts at the top
    assert f(6.0) == pytest.approx(0.5)  # half way through the decay
    assert f(9.75) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7.75 / 8.0)))  # the last step
    values = [f(i * dt) for i in range(int(epochs / dt))]
    assert min(values) > 0
    peak = values.index(max(values))
    assert all(a <= b for a, b in zip(values[:peak], values[1:peak + 1]))
    assert all(a >= b for a, b in zip(values[peak:], values[peak + 1:]))


def test_step_schedule_and_cosine_momentum_exact_values():
    step = lambda t: lr_factor(t, 0.1, 10.0, 0.0, "step", [0.6, 0.8])  # noqa: E731
    assert (step(0.0), step(5.9), step(6.0), step(8.0)) == pytest.approx((1.0, 1.0, 0.1, 0.01))
    m = lambda t: momentum_at(t, 10.0, 0.99, "cosine")  # noqa: E731
    assert (m(0.0), m(5.0), m(10.0)) == pytest.approx((0.99, 0.995, 1.0))
    values = [m(t / 4) for t in range(41)]
    assert all(a < b for a, b in zip(values, values[1:]))
    assert momentum_at(7.0, 10.0, 0.99, "const") == 0.99


@needs_fmnist()
def test_the_trainer_applies_warmup_and_cosine_momentum_per_step(tmp_path, monkeypatch):
    seen = []
    real = MocoStep.__call__

    def spy(self, micro, momentum, times=None):
        seen.append((self.optimizer.param_groups[0]["lr"], momentum))
        return real(self, micro, momentum, times)

    monkeypatch.setattr(MocoStep, "__call__", spy)
    train(TrainConfig(data=FMNIST_DIR, subset=256, batch_size=32, width=4, K=64, epochs=2, lr=0.1,
                      warmup_epochs=1.0, m=0.9, m_schedule="cosine", schedule="cosine", progress=False, threads=2,
                      knn_k=5, out=str(tmp_path)).resolved(), log=lambda *_: None)
    assert len(seen) == 16  # 8 steps per epoch
    lrs, ms = zip(*seen)
    assert lrs[0] == pytest.approx(0.1 / 8) and lrs[7] == pytest.approx(0.1)  # warm-up over epoch 1
    assert lrs[8] == pytest.approx(0.1) and lrs[15] == pytest.approx(0.05 * (1 + math.cos(math.pi * 7 / 8)))
    assert ms[0] == pytest.approx(0.9) and ms[8] == pytest.approx(0.95)  # cosine momentum, half-way at epoch 1
    assert all(a < b for a, b in zip(ms, ms[1:]))


# -- 3. Split-BN ----------------------------------------------------------------------------------------------
def test_backbone_uses_split_bn_when_asked_and_plain_bn_otherwise():
    split = build_backbone("resnet10", 4, "small", 1, bn_splits=4)
    norms = [m for m in split.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(isinstance(m, SplitBatchNorm2d) and m.num_splits == 4 for m in norms)
    plain = build_backbone("resnet10", 4, "small", 1, bn_splits=1)
    norms = [m for m in plain.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and not any(isinstance(m, SplitBatchNorm2d) for m in norms)
    moco = MoCo.from_config(_tiny(bn_splits=2), 1)
    assert all(m.num_splits == 2 for m in moco.encoder_k.modules() if isinstance(m, SplitBatchNorm2d))


def test_split_bn_running_statistics_equal_per_split_batchnorm():
    torch.manual_seed(0)
    scale = torch.tensor([1.0, 10.0, 0.1]).view(1, 3, 1, 1)  # channels that differ, so a mix-up shows
    shift = torch.tensor([0.0, 5.0, -3.0]).view(1, 3, 1, 1)
    sbn = SplitBatchNorm2d(3, num_splits=2)
    refs = [nn.BatchNorm2d(3) for _ in range(2)]
    for _ in range(3):
        x = torch.randn(8, 3, 4, 4) * scale + shift
        sbn(x)
        for part, bn in enumerate(refs):  # split `part` holds samples part, part + 2, ...
            bn(x.view(4, 2, 3, 4, 4)[:, part])
    torch.testing.assert_close(sbn.running_mean, (refs[0].running_mean + refs[1].running_mean) / 2)
    torch.testing.assert_close(sbn.running_var, (refs[0].running_var + refs[1].running_var) / 2)


# -- 4. kNN weighting ---------------------------------------------------------------------------------------------
def test_knn_weighting_decides_the_class():
    # two class-0 neighbours at cosine 0.5 against one class-1 neighbour at 0.9
    query = torch.tensor([[1.0, 0.0]])
    bank = torch.tensor([[0.5, math.sqrt(0.75)], [0.5, -math.sqrt(0.75)], [0.9, math.sqrt(0.19)]])
    labels = torch.tensor([0, 0, 1])
    # t=0.1: 2 exp(5) = 296.8 < exp(9) = 8103 -> class 1; t=1: 2 exp(0.5) = 3.30 > exp(0.9) = 2.46 -> class 0
    assert knn_predict(query, bank, labels, 2, k=3, t=0.1).item() == 1
    assert knn_predict(query, bank, labels, 2, k=3, t=1.0).item() == 0
    assert knn_predict(query, bank, labels, 2, k=1, t=1.0).item() == 1  # k=1: the nearest alone
    assert knn_predict(query, bank, labels, 2, k=2, t=0.1).item() == 1  # k=2: the 0.9 and one 0.5


# -- 5. the two views of a pair ---------------------------------------------------------------------------------
def test_tensor_data_pairs_two_different_draws_of_the_same_image():
    images = torch.arange(64, dtype=torch.uint8).view(64, 1, 1, 1).expand(64, 1, 4, 4).contiguous()  # image i = i
    cfg = TrainConfig(batch_size=8, bn_splits=1).resolved()
    data = TensorData(cfg, "cpu", images, torch.zeros(64, dtype=torch.long), images[:1], images[:1, 0, 0, 0].long())
    mark = lambda x, g: x.float() + 0.4 * torch.rand(x.shape, generator=g)  # noqa: E731 marks each draw, keeps the image
    data.augments = [mark, mark]
    plan = list(data.plan(epoch=3))
    for (v1, v2), (_, idx) in zip(data.epoch(3), plan):
        assert not torch.equal(v1, v2)  # two draws
        source = images[idx].float()
        assert torch.equal(v1.floor(), source) and torch.equal(v2.floor(), source)  # of the same images, in order


def test_folder_pairs_two_different_draws_of_the_same_image(tmp_path):
    from PIL import Image

    from fastmoco.data import FolderData, image_folder
    from torchvision.transforms.v2 import functional as TF

    for i in range(12):
        (tmp_path / f"c{i % 2}").mkdir(exist_ok=True)
        Image.new("RGB", (4, 4), (i * 20, 0, 0)).save(tmp_path / f"c{i % 2}" / f"{i}.png")
    cfg = TrainConfig(data=str(tmp_path), batch_size=4, bn_splits=1, workers=0).resolved()
    data = FolderData(cfg, "cpu", image_folder(str(tmp_path)), None)
    mark = lambda img: TF.pil_to_tensor(img).float() + 0.4 * torch.rand(3, 4, 4)  # noqa: E731
    data.pairs.transforms = (mark, mark)
    plan = list(data.plan(epoch=1))
    for (v1, v2), (_, idx) in zip(data.epoch(1), plan):
        assert not torch.equal(v1, v2)
        source = torch.stack([TF.pil_to_tensor(data.train_ds.loader(data.train_ds.samples[i][0])).float()
                              for i in idx.tolist()])
        assert torch.equal(v1.floor(), source) and torch.equal(v2.floor(), source)
