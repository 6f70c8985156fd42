"""LARS against a hand computation on a toy model: weights get weight decay and the trust ratio, biases and
BatchNorm parameters neither; momentum on the scaled update; a zero-norm weight keeps ratio 1. And the run's
``--optimizer`` switch."""
import pytest
import torch

from fastmoco.train import ConfigError, TrainConfig
from fastmoco.train.optim import LARS, build_optimizer

LR, WD, MOM, TC = 0.5, 0.1, 0.9, 0.001


def _toy():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2, bias=False))
    return net, torch.randn(8, 3)


def _grads(net, x):
    net.zero_grad()
    (net(x) ** 2).sum().backward()
    return {name: p.grad.clone() for name, p in net.named_parameters()}


def _expected_update(p, g, buf):
    """One LARS step of one tensor, written out: (new value, new momentum buffer)."""
    if p.dim() > 1:
        d = g + WD * p
        ratio = TC * p.norm() / d.norm() if p.norm() > 0 and d.norm() > 0 else 1.0
        d = d * ratio
    else:  # bias, BN weight and bias: the plain gradient
        d = g
    buf = MOM * buf + d
    return p - LR * buf, buf


def test_two_lars_steps_match_the_hand_computation():
    net, x = _toy()
    opt = LARS(net.parameters(), lr=LR, momentum=MOM, weight_decay=WD, trust_coefficient=TC)
    values = {n: p.detach().clone() for n, p in net.named_parameters()}
    bufs = {n: torch.zeros_like(p) for n, p in values.items()}
    for _ in range(2):
        grads = _grads(net, x)
        opt.step()
        for name, p in net.named_parameters():
            values[name], bufs[name] = _expected_update(values[name], grads[name], bufs[name])
            torch.testing.assert_close(p.detach(), values[name], rtol=1e-6, atol=1e-7)
    # the excluded tensors moved by exactly lr * (momentum-accumulated) gradient: no decay, no ratio
    assert {n for n, p in net.named_parameters() if p.dim() <= 1} == {"0.bias", "1.weight", "1.bias"}


def test_a_zero_weight_keeps_the_ratio_one():
    w = torch.nn.Parameter(torch.zeros(2, 2))
    w.grad = torch.ones(2, 2)
    LARS([w], lr=1.0, momentum=0.0, weight_decay=WD, trust_coefficient=TC).step()
    assert torch.equal(w.detach(), -torch.ones(2, 2))  # ratio 1: the full gradient step


def test_the_optimizer_setting():
    params = list(torch.nn.Linear(2, 2).parameters())
    assert isinstance(build_optimizer(TrainConfig().resolved(), params, 0.1), torch.optim.SGD)
    lars = build_optimizer(TrainConfig(optimizer="lars").resolved(), params, 0.1)
    assert isinstance(lars, LARS) and lars.defaults["trust_coefficient"] == TC
    with pytest.raises(ConfigError, match="unknown optimizer 'adam'; choose one of"):
        TrainConfig(optimizer="adam").resolved()
    with pytest.raises(ValueError, match="LARS needs"):
        LARS(params, lr=-1.0)


@pytest.mark.slow
def test_a_lars_run_trains_resumes_and_keeps_its_optimizer(tmp_path):
    from helpers import FMNIST_DIR
    from fastmoco.train import train

    if not __import__("os").path.isdir(FMNIST_DIR):
        pytest.skip("apt-get install dataset-fashion-mnist")
    kw = dict(data=FMNIST_DIR, subset=256, batch_size=32, width=4, K=64, epochs=1, progress=False, threads=2,
              knn_k=5, out=str(tmp_path), optimizer="lars", lr=1.0)
    train(TrainConfig(**kw, max_steps=3).resolved(), log=lambda *_: None)
    summary = train(TrainConfig(**kw, resume="auto").resolved(), log=lambda *_: None)
    assert summary["steps"] == 256 // 32 and summary["knn_top1"] is not None
    with pytest.raises(ConfigError, match=r"optimizer cannot change on resume \(checkpoint: 'lars', now: 'sgd'\)"):
        train(TrainConfig(**{**kw, "optimizer": "sgd", "epochs": 2}, resume="auto").resolved(), log=lambda *_: None)
