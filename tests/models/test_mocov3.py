"""MoCo v3 as a module: the layer layout, the loss against a float64 hand computation (1 and 2 gloo ranks), the EMA
(predictor and BN buffers left out), the order EMA -> next keys, and one step against an original-style forward."""
import copy
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from processes import free_port
from fastmoco.models import MoCoV3, bn_mlp, build_backbone, build_method
from fastmoco.runs.config import TrainConfig
from fastmoco.train.schedules import momentum_at


def _v3(**kw) -> MoCoV3:
    cfg = TrainConfig(method="v3", width=4, mlp_dim=32, dim=16, **kw).resolved().for_runtime("cpu", 1)
    return build_method(cfg, 1)


def test_projector_and_predictor_layout_as_the_original():
    model = _v3()
    head, pred = model.encoder_q.head, model.predictor
    feat = model.backbone.feat_dim
    assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]
    assert [type(m) for m in pred] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]  # ResNet: no last BN
    assert (head[0].in_features, head[0].out_features, head[3].out_features) == (feat, 32, 16)
    assert (pred[0].in_features, pred[0].out_features, pred[3].out_features) == (16, 32, 16)
    assert all(m.bias is None for m in (head[0], head[3], pred[0], pred[3]))
    assert head[1].affine and not head[4].affine  # the projector ends in a BN without affine parameters
    keys = set(model.state_dict())
    assert {"encoder_q.head.0.weight", "encoder_q.head.4.running_mean", "predictor.3.weight"} <= keys
    assert not any(k.startswith("queue") or k == "ptr" for k in keys)
    vit_like = bn_mlp(3, 8, 16, 4, last_bn=True)  # the ViT projector: 3 layers, last BN
    assert [type(m) for m in vit_like][-2:] == [nn.Linear, nn.BatchNorm1d] and len(vit_like) == 8
    assert [type(m) for m in _v3(pred_last_bn=True).predictor][-1] is nn.BatchNorm1d


def test_resnet_residual_branches_start_at_zero():
    model = _v3()
    assert all(torch.all(b.bn2.weight == 0) for layer in ("layer1", "layer4")
               for b in getattr(model.backbone, layer))
    assert not torch.all(build_backbone("resnet10", 4, "small", 1).layer1[0].bn2.weight == 0)


def _hand_ctr(q, k_all, offset, T):
    """-mean_i log softmax(q_i . k_j / T)[offset + i], in float64, times 2T."""
    total = 0.0
    for i in range(q.shape[0]):
        logits = [float(q[i] @ k_all[j]) / T for j in range(k_all.shape[0])]
        top = max(logits)
        lse = top + math.log(sum(math.exp(x - top) for x in logits))
        total += lse - logits[offset + i]
    return 2 * T * total / q.shape[0]


@pytest.mark.parametrize("ops_impl", ["fused", "reference"])
def test_loss_equals_a_float64_hand_computation_in_one_process(ops_impl):
    model = _v3(ops=ops_impl, T=0.5)
    q = F.normalize(torch.randn(5, 16, dtype=torch.float64), dim=1)
    k = F.normalize(torch.randn(5, 16, dtype=torch.float64), dim=1)
    got = model.ctr(q, k).item()
    assert got == pytest.approx(_hand_ctr(q, k, 0, 0.5), rel=1e-6)  # the op runs in fp32


def test_identical_embeddings_give_exactly_4T_ln_N():
    for T in (1.0, 0.2):
        model = _v3(T=T)
        v = F.normalize(torch.randn(1, 16), dim=1).expand(8, 16)
        total = model.ctr(v, v) + model.ctr(v, v)
        assert total.item() == pytest.approx(4 * T * math.log(8), rel=1e-6)



def _ranks_worker(rank, world, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # every rank draws all ranks' rows, then takes its own
        q_all = F.normalize(torch.randn(world * 3, 16, dtype=torch.float64), dim=1)
        k_all = F.normalize(torch.randn(world * 3, 16, dtype=torch.float64), dim=1)
        model = _v3(T=0.7)
        mine = slice(3 * rank, 3 * rank + 3)
        got = model.ctr(q_all[mine], k_all[mine]).item()
        same = F.normalize(torch.ones(3, 16), dim=1)
        uniform = (model.ctr(same, same) * 2).item()
        results[rank] = (got, _hand_ctr(q_all[mine], k_all, 3 * rank, 0.7), uniform)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_loss_at_two_gloo_ranks_gathers_keys_and_offsets_labels_by_rank():
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ranks_worker, args=(2, free_port(), results), nprocs=2)
        for rank in range(2):
            got, hand, uniform = results[rank]
            assert got == pytest.approx(hand, rel=1e-6)  # labels N*rank + i over the 2N gathered keys
            assert uniform == pytest.approx(4 * 0.7 * math.log(3 * 2), rel=1e-6)  # 4T ln(N W)


def test_ema_covers_backbone_and_projector_only():
    model = _v3()
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(1.0)
        for b in model.encoder_q.buffers():
            if b.is_floating_point():
                b.add_(3.0)
    k_before = copy.deepcopy(model.encoder_k.state_dict())
    q_params = dict(model.encoder_q.named_parameters())
    pred_before = copy.deepcopy(model.predictor.state_dict())
    model.after_step(None, 0.9)
    for name, p in model.encoder_k.named_parameters():
        assert torch.allclose(p, 0.9 * k_before[name] + 0.1 * q_params[name], atol=1e-6), name
    for name, b in model.encoder_k.named_buffers():  # BN running statistics are not averaged
        assert torch.equal(b, k_before[name]), name
    assert all(torch.equal(v, pred_before[k]) for k, v in model.predictor.state_dict().items())
    n_q, n_k = len(list(model.encoder_q.parameters())), len(model.ema_pairs()[0])
    assert n_q == n_k and len(list(model.query_network().parameters())) == n_q + len(list(model.predictor.parameters()))


def test_momentum_at_the_first_middle_and_last_step():
    epochs, steps = 4, 100  # the schedule of a run of 4 epochs of 25 steps
    dt = epochs / steps
    assert momentum_at(0.0, epochs, 0.99, "cosine") == 0.99
    assert momentum_at(epochs / 2, epochs, 0.99, "cosine") == pytest.approx(0.995, abs=1e-15)
    last = momentum_at(epochs - dt, epochs, 0.99, "cosine")
    assert last == pytest.approx(1 - 0.01 * 0.5 * (1 + math.cos(math.pi * (steps - 1) / steps)), abs=1e-15)
    assert 0.99999 < last < 1.0


def test_the_ema_runs_after_the_update_and_before_the_next_steps_keys():
    """Step t: q-forward, k-forward (encoder_k as left by step t-1's EMA), backward, update, EMA(m_t)."""
    torch.manual_seed(0)
    model = _v3(T=0.2)
    opt = torch.optim.SGD(model.query_network().parameters(), lr=0.5)
    seen = []
    model.encoder_k.register_forward_pre_hook(lambda m, _: seen.append(copy.deepcopy(m.state_dict())))
    x1, x2 = torch.randn(8, 1, 16, 16), torch.randn(8, 1, 16, 16)
    names = [n for n, _ in model.encoder_k.named_parameters()]  # (its BN statistics move with each key pass)
    expect_k = copy.deepcopy(model.encoder_k.state_dict())
    for m in (0.9, 0.8):
        seen.clear()
        loss, keys = model(x1, x2)
        assert keys is None and len(seen) == 2
        assert all(torch.equal(s[n], expect_k[n]) for s in seen for n in names)  # keys from the last EMA
        opt.zero_grad()
        loss.backward()
        opt.step()
        q = dict(model.encoder_q.named_parameters())
        expect_k = {n: m * seen[-1][n] + (1 - m) * q[n].detach() for n in names}
        model.after_step(None, m)
        for n, p in model.encoder_k.named_parameters():
            assert torch.allclose(p, expect_k[n], atol=1e-6)
        expect_k = copy.deepcopy(model.encoder_k.state_dict())


def _original_style_loss(model, x1, x2, T):
    """The v3 paper's pseudo-code: two query passes, the momentum encoder's keys, CE(logits, arange) x 2T."""
    base, pred, mom = model.encoder_q, model.predictor, model.encoder_k
    q1, q2 = pred(base(x1)), pred(base(x2))
    with torch.no_grad():
        k1, k2 = mom(x1), mom(x2)

    def ctr(q, k):
        logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / T
        return F.cross_entropy(logits, torch.arange(q.shape[0])) * 2 * T
    return ctr(q1, k2) + ctr(q2, k1)


def test_one_step_equals_the_original_style_forward():
    torch.manual_seed(1)
    model = _v3(T=0.2)
    twin = copy.deepcopy(model)
    x1, x2 = torch.randn(8, 1, 16, 16), torch.randn(8, 1, 16, 16)
    loss, _ = model(x1, x2)
    ref = _original_style_loss(twin, x1, x2, 0.2)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    loss.backward()
    ref.backward()
    for (name, a), (_, b) in zip(model.query_network().named_parameters(), twin.query_network().named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name
    for a, b in zip(model.buffers(), twin.buffers()):  # the same BN statistics updates (one pass per view)
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_forward_traces_as_one_graph():
    model = _v3()
    explained = torch._dynamo.explain(model)(torch.randn(8, 1, 16, 16), torch.randn(8, 1, 16, 16))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_small_views_are_refused_by_the_module():
    with pytest.raises(ValueError, match="multi-crop"):
        _v3()(torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16), None, torch.randn(8, 1, 8, 8))


def test_bad_v3_arguments():
    backbone = build_backbone("resnet10", 4, "small", 1)
    for kw, msg in ((dict(T=0.0), "temperature"), (dict(m=1.5), "momentum"), (dict(ops_impl="fast"), "ops must")):
        with pytest.raises(ValueError, match=msg):
            MoCoV3(backbone, backbone.feat_dim, **kw)
