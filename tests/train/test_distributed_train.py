"""The training loop under torch.distributed: two CPU processes (gloo), as torchrun would start them."""
import os

import pytest
import torch
import torch.distributed as dist

from helpers import needs_fmnist, tiny
from processes import join_env, spawn
from fastmoco.train import TrainConfig, train
from fastmoco.models.shuffle import CrossRankShuffle
from fastmoco.train.loop import Trainer

pytestmark = [needs_fmnist(), pytest.mark.slow]
B = 32  # per-process batch
TINY = tiny(batch_size=B, K=200, threads=1)


def _train_worker(rank, world, port, results, cfg_kw):
    join_env(rank, world, port)
    trainer = Trainer(TrainConfig(**cfg_kw).resolved(), log=lambda *_: None)
    seen_keys = []
    real = trainer.step.after_update

    def recording(keys, momentum):
        seen_keys.append(keys.clone())
        real(keys, momentum)

    trainer.step.after_update = recording
    try:
        trainer.fit()
        results[rank] = dict(state={k: v.clone() for k, v in trainer.model.state_dict().items()},
                             keys=[k for k in seen_keys], steps=trainer.pos.step)
    finally:
        trainer.close()


@pytest.mark.parametrize("extra", [{}, dict(small_crops=2, small_crop_size=16)], ids=["two-views", "multi-crop"])
def test_two_ranks_stay_identical_and_queue_all_keys_in_rank_order(tmp_path, extra):
    # multi-crop: DDP sees the query batches of both resolutions in one forward (QueryViews)
    res = spawn(_train_worker, dict(TINY, out=str(tmp_path), max_steps=3, **extra))
    a, b = res[0], res[1]
    assert a["steps"] == b["steps"] == 3
    for name, value in a["state"].items():  # key and query encoders, queue, ptr: bit-identical on both ranks
        assert torch.equal(value, b["state"][name]), name
    assert a["state"]["ptr"].item() == 3 * 2 * B % TINY["K"]
    queue = a["state"]["queue"]
    for step in range(3):  # 64 keys a step from row 0 (K=200, no wrap yet): rank 0's 32, then rank 1's 32
        for rank in range(2):
            rows = torch.arange(B) + (2 * step + rank) * B
            assert torch.equal(queue[rows], res[rank]["keys"][step]), (step, rank)


def _shuffle_worker(rank, world, port, results):
    join_env(rank, world, port)
    dist.init_process_group("gloo")
    try:
        torch.manual_seed(rank)  # only rank 0's draw may matter
        n = 16
        x = (torch.arange(n) + rank * n).float().view(n, 1)  # (N, 1) global row ids
        local, undo = CrossRankShuffle()(x)
        encoded = local * 10 + 1  # a stand-in key encoder, row-wise
        results[rank] = dict(local=local.view(-1).long().tolist(), back=undo(encoded).view(-1).tolist())
    finally:
        dist.destroy_process_group()


def test_shuffle_bn_is_a_cross_rank_permutation_and_keys_come_back_to_their_rows():
    res = spawn(_shuffle_worker)
    n = 16
    assert sorted(res[0]["local"] + res[1]["local"]) == list(range(2 * n))  # a permutation of both ranks' rows
    for rank in range(2):
        foreign = [i for i in res[rank]["local"] if i // n != rank]
        assert foreign, f"rank {rank} encoded only its own images"
        assert res[rank]["back"] == [(rank * n + i) * 10 + 1 for i in range(n)]


def _ckpt(out):
    return torch.load(os.path.join(out, "last.pt"), weights_only=False)


@pytest.mark.heavy  # several processes for ~15-20 s: the heavy set (make test-heavy)
def test_two_rank_checkpoint_resumes_in_one_process_and_back(tmp_path):
    n, k = TINY["subset"], TINY["K"]
    out = str(tmp_path / "a")
    spawn(_train_worker, dict(TINY, out=out, max_steps=3))  # 3 steps of 2 x 32 images, then stopped mid-epoch
    pos = _ckpt(out)["position"]
    assert (pos["epoch"], pos["samples"], pos["step"], _ckpt(out)["world_size"]) == (0, 3 * 2 * B, 3, 2)
    summary = train(TrainConfig(**TINY, out=out, resume="auto").resolved(), log=lambda *_: None)
    done = _ckpt(out)
    rest = (n - 3 * 2 * B) // B  # one process continues with the next unseen images
    assert summary["knn_top1"] is not None and done["epoch"] == 1 and done["position"]["step"] == 3 + rest
    assert done["model"]["ptr"].item() == (3 * 2 * B + rest * B) % k

    out = str(tmp_path / "b")
    train(TrainConfig(**TINY, out=out, max_steps=5).resolved(), log=lambda *_: None)
    assert _ckpt(out)["position"]["samples"] == 5 * B
    spawn(_train_worker, dict(TINY, out=out, resume="auto"))
    done = _ckpt(out)
    rest = (n - 5 * B) // (2 * B)
    assert done["epoch"] == 1 and done["position"]["step"] == 5 + rest and done["world_size"] == 2
    assert done["model"]["ptr"].item() == (5 * B + rest * 2 * B) % k


def test_every_image_once_per_epoch_across_ranks_and_from_any_position():
    from fastmoco.data import EpochPlan

    cfg = TrainConfig(batch_size=8, accum_steps=2).resolved()
    shards = [EpochPlan(cfg, 100, rank, 3) for rank in range(3)]  # 48 images per optimizer step
    assert len(shards[0]) == 2
    seen = [int(i) for s in shards for _, idx in s.plan(epoch=4) for i in idx]
    assert len(seen) == 96 and len(set(seen)) == 96  # 2 steps x 48, no image twice
    again = [int(i) for s in shards for _, idx in s.plan(epoch=4) for i in idx]
    assert again == seen  # the order of (seed, epoch) is fixed
    step0 = {int(i) for s in shards for _, idx in list(s.plan(epoch=4))[:2] for i in idx}  # 2 micro-batches each
    resumed = [int(i) for s in shards for _, idx in s.plan(epoch=4, skip=48) for i in idx]
    assert len(step0) == 48 and sorted(resumed) == sorted(set(seen) - step0)
