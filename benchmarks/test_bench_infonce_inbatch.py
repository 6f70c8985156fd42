"""In-batch InfoNCE (MoCo v3) forward+backward: fused op vs the original code's q @ keys.T + cross_entropy.

Shapes (C=256, MoCo v3's embedding): N=512 queries of one rank against the M=4096 keys of a global batch of 8
ranks x 512; on a GPU also N=4096 against M=32,768 (8 ranks x 4096), bf16."""
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import device_under_test, sync
from fastmoco import ops

DEV = device_under_test()
C = 256
# CPU: the big shape's naive round takes ~1.5 GiB and seconds; FASTMOCO_BENCH_FULL=1 runs it there too
FULL = os.environ.get("FASTMOCO_BENCH_FULL") == "1" or DEV.type == "cuda"
SHAPES = [(512, 4096, 512 * 3)] + ([(4096, 32768, 4096 * 3)] if FULL else [])  # (N, M, offset)
DTYPES = [torch.float32] + ([torch.bfloat16] if DEV.type == "cuda" else [])
IMPLS = {"fused": ops.infonce_inbatch, "naive": ops.infonce_inbatch_reference}


def _inputs(n, m, dtype):
    g = torch.Generator(device="cpu").manual_seed(0)
    q = F.normalize(torch.randn(n, C, generator=g), dim=1).to(DEV, dtype).requires_grad_()
    keys = F.normalize(torch.randn(m, C, generator=g), dim=1).to(DEV, dtype)
    return q, keys


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N,M,offset", SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("impl", ["fused", "naive"])
def test_infonce_inbatch_fwd_bwd(benchmark, record_memory, impl, N, M, offset, dtype):
    benchmark.group = f"infonce_inbatch fwd+bwd N={N} M={M} C={C} {dtype} {DEV.type}"
    q, keys = _inputs(N, M, dtype)

    def run():
        IMPLS[impl](q, keys, offset, 0.2).backward()
        q.grad = None
        sync(DEV)

    run()  # warm-up (and Triton compilation on CUDA)
    record_memory(benchmark, run, DEV)
    rounds = 50 if DEV.type == "cuda" else 10 if N <= 512 else 3
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=1)
