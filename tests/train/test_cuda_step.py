"""CUDA only (runs in benchmarks/gpu_check.sh): the training step never waits for the GPU."""
import pytest
import torch

from helpers import cuda_only
from fastmoco import ops
from fastmoco.data import TensorData
from fastmoco.models import MoCo
from fastmoco.train import TrainConfig
from fastmoco.runs.distributed import ProcessGroup
from fastmoco.train.step import MocoStep


@cuda_only
@pytest.mark.cuda
def test_cuda_train_steps_make_no_host_sync():
    dev = torch.device("cuda")
    cfg = TrainConfig(batch_size=32, width=4, K=200, compile=False).resolved().for_runtime("cuda", 1)
    images = torch.randint(0, 256, (256, 1, 28, 28), dtype=torch.uint8)  # no dataset needed on a GPU machine
    labels = torch.zeros(256, dtype=torch.long)
    data = TensorData(cfg, dev, images, labels, images[:1], labels[:1])
    model = MoCo.from_config(cfg, data.in_channels).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=0.03, momentum=0.9)
    step = MocoStep(model, opt, cfg, ProcessGroup(device=dev))
    batches = data.epoch(0)  # the epoch's order goes to the GPU once, here
    step([next(batches)], cfg.m)  # first step: lazy initialisation (cuBLAS handles, optimizer state)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            loss = step([next(batches)], cfg.m)  # data, augmentation, bf16 fwd/bwd, SGD, EMA, enqueue
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss).item()


@cuda_only
@pytest.mark.cuda
def test_cuda_graphs_reduce_overhead_step_with_the_custom_ops():
    """--compile-mode reduce-overhead (CUDA graphs): the compiled EMA + enqueue graph, custom ops inside, writes
    exactly what the eager ops write, and whole steps run; what inductor did not capture is printed (its
    cudagraph-skip counters), so gpu_check's output says what is captured and what is not."""
    from torch._dynamo.utils import counters

    dev = torch.device("cuda")
    cfg = TrainConfig(batch_size=32, width=4, K=256, compile=True, compile_mode="reduce-overhead",
                      amp=False).resolved().for_runtime("cuda", 1)
    images = torch.randint(0, 256, (512, 1, 28, 28), dtype=torch.uint8)
    data = TensorData(cfg, dev, images, torch.zeros(512, dtype=torch.long), images[:1], images[:1, 0, 0, 0].long())
    model = MoCo.from_config(cfg, data.in_channels).to(dev).to(memory_format=torch.channels_last)
    step = MocoStep(model, torch.optim.SGD(model.encoder_q.parameters(), lr=0.03, momentum=0.9), cfg,
                    ProcessGroup(device=dev))
    assert model._post is not None  # the EMA + enqueue graph is compiled (constant momentum, fused ops)
    counters.clear()
    batches = data.epoch(0)
    for _ in range(4):  # the first calls record the graphs, the later ones replay them
        loss = step([next(batches)], cfg.m)
    assert torch.isfinite(loss).item()
    print("inductor counters after 4 reduce-overhead steps:", dict(counters["inductor"]))
    # the compiled post-step against the eager ops, on copies: the same kernels, so the same bits
    dst = [t.detach().clone() for t in model._pairs[0]]
    src = [t.detach().clone() for t in model._pairs[1]]
    queue, ptr = model.queue.clone(), model.ptr.clone()
    keys = torch.randn(32, model.queue.shape[1], device=dev)
    e_dst, e_queue, e_ptr = [t.clone() for t in dst], queue.clone(), ptr.clone()
    for _ in range(3):
        model._post(dst, src, cfg.m, queue, ptr, keys)
        ops.ema_(e_dst, src, cfg.m)
        ops.enqueue_(e_queue, e_ptr, keys)
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(dst, e_dst))
    assert torch.equal(queue, e_queue) and torch.equal(ptr, e_ptr)


@cuda_only
@pytest.mark.cuda
def test_cuda_v3_steps_make_no_host_sync_and_match_the_fp32_reference_loss():
    """MoCo v3 on one GPU: bf16 autocast, channels-last, LARS (its trust ratio stays a device tensor), the
    in-batch Triton loss; no host sync per step, and its first loss equals the reference ops' at fp32."""
    from fastmoco.models import build_method
    from fastmoco.train.optim import build_optimizer

    dev = torch.device("cuda")
    cfg = TrainConfig(method="v3", batch_size=32, width=4, mlp_dim=64, compile=False).resolved().for_runtime("cuda", 1)
    images = torch.randint(0, 256, (256, 1, 28, 28), dtype=torch.uint8)
    labels = torch.zeros(256, dtype=torch.long)
    data = TensorData(cfg, dev, images, labels, images[:1], labels[:1])
    model = build_method(cfg, data.in_channels).to(dev).to(memory_format=torch.channels_last)
    step = MocoStep(model, build_optimizer(cfg, model.query_network().parameters(), 0.3), cfg, ProcessGroup(device=dev))
    batches = data.epoch(0)
    v1, v2 = next(batches)
    with torch.no_grad():
        fused = model(v1, v2)[0]
        model.ops_impl = "reference"
        ref = model(v1, v2)[0]
        model.ops_impl = "fused"
    torch.testing.assert_close(fused, ref, atol=1e-4, rtol=1e-4)
    step([(v1, v2)], cfg.m)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            loss = step([next(batches)], cfg.m)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss).item()
