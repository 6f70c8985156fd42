"""InfoNCE forward+backward: fused op vs naive einsum + cat + cross_entropy, N=256, C=128, and a K sweep."""
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import device_under_test, sync
from fastmoco import ops

DEV = device_under_test()
N, C = 256, 128
# CPU: the naive path at K=1,048,576 needs ~2 GiB and ~10 s a round; FASTMOCO_BENCH_FULL=1 runs the whole sweep
FULL = os.environ.get("FASTMOCO_BENCH_FULL") == "1" or DEV.type == "cuda"
SWEEP = [4096, 16384, 65536, 262144] + ([1048576] if FULL else [])
DTYPES = [torch.float32] + ([torch.bfloat16] if DEV.type == "cuda" else [])
IMPLS = {"fused": ops.infonce, "naive": ops.infonce_reference}


def _inputs(n, k, dtype):
    g = torch.Generator(device="cpu").manual_seed(0)
    q = F.normalize(torch.randn(n, C, generator=g), dim=1).to(DEV, dtype).requires_grad_()
    key = F.normalize(torch.randn(n, C, generator=g), dim=1).to(DEV, dtype)
    queue = F.normalize(torch.randn(k, C, generator=g), dim=1).to(DEV, dtype)
    return q, key, queue


def _fwd_bwd(impl, q, k, queue):
    def run():
        loss = IMPLS[impl](q, k, queue, 0.2)
        loss.backward()
        q.grad = None
        sync(DEV)
    return run


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("K", SWEEP)
@pytest.mark.parametrize("impl", ["fused", "naive"])
def test_infonce_fwd_bwd(benchmark, record_memory, impl, K, dtype):
    benchmark.group = f"infonce fwd+bwd N={N} C={C} K={K} {dtype} {DEV.type}"
    q, k, queue = _inputs(N, K, dtype)
    run = _fwd_bwd(impl, q, k, queue)
    run()  # warm-up (and Triton compilation on CUDA)
    record_memory(benchmark, run, DEV)
    benchmark.pedantic(run, rounds=5 if DEV.type == "cpu" else 50, warmup_rounds=1)


@pytest.mark.skipif(DEV.type != "cuda", reason="the N=4096, K=2^20 capacity check is a GPU figure")
@pytest.mark.parametrize("impl", ["fused", "naive"])
def test_infonce_big_batch_capacity(benchmark, impl):
    """N=4096, K=1,048,576 bf16: the naive logits alone take 8 GiB (fp32 copies more); fused stays small."""
    benchmark.group = "infonce capacity N=4096 K=1048576 bf16"
    q, k, queue = _inputs(4096, 1 << 20, torch.bfloat16)
    run = _fwd_bwd(impl, q, k, queue)
    try:
        run()
    except torch.OutOfMemoryError:
        benchmark.extra_info["result"] = "out of memory"
        pytest.skip("naive path ran out of GPU memory (expected for the naive path)")
    benchmark.extra_info["peak_extra_MiB"] = torch.cuda.max_memory_allocated() / 2**20
    benchmark.pedantic(run, rounds=5, warmup_rounds=0)
