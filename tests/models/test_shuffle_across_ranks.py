"""Two CPU processes (gloo): every rank's queue receives all ranks' keys, in rank order."""
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastmoco.models.shuffle import gather_keys


def _worker(rank, world, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from fastmoco import ops

        keys = torch.full((3, 4), float(rank))
        queue, ptr = torch.zeros(8, 4), torch.tensor([6])
        ops.enqueue_(queue, ptr, gather_keys(keys))
        results[rank] = (queue.clone(), ptr.item())
    finally:
        dist.destroy_process_group()


def test_enqueue_all_gathered_keys():
    world, port = 2, 29500 + os.getpid() % 1000
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(world, port, results), nprocs=world)
        expect = torch.zeros(8, 4)
        rows = [6, 7, 0, 1, 2, 3]  # rank 0's three keys then rank 1's, from ptr 6, wrapping at K=8
        for i, r in enumerate(rows):
            expect[r] = 0.0 if i < 3 else 1.0
        for rank in range(world):
            queue, ptr = results[rank]
            assert torch.equal(queue, expect) and ptr == 4
    assert gather_keys(torch.ones(2, 2)).shape == (2, 2)  # identity outside a process group
