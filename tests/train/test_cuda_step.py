"""CUDA only (runs in benchmarks/gpu_check.sh): the training step never waits for the GPU."""
import pytest
import torch

from conftest import cuda_only
from fastmoco.data import TensorData
from fastmoco.models import MoCo
from fastmoco.train import TrainConfig
from fastmoco.train.distributed import ProcessGroup
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
