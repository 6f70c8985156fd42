"""The ops' fixed per-call host cost: tiny tensors, one thread, so the arithmetic is negligible and what is timed
is Python, argument checks and dispatch, beside the plain-torch call each op replaces.

- ema_: 161 one-element pairs (ResNet-50's parameter count) vs ``torch._foreach_lerp_``;
- enqueue_: N=4 keys into K=64 x 8 vs ``index_copy_`` at computed rows (the reference) and a slice assignment;
- infonce / infonce_inbatch, forward+backward, N=8, C=16, K or M=64 vs the two GEMMs + cross_entropy.
"""
import pytest
import torch
import torch.nn.functional as F

from fastmoco import ops

ROUNDS = 300


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _bench(benchmark, group, fn):
    benchmark.group = group
    fn()
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=5, warmup_rounds=10)


@pytest.mark.parametrize("impl", ["fused ema_", "torch._foreach_lerp_"])
def test_host_ema_161_tiny(benchmark, impl):
    dst = [torch.zeros(1) for _ in range(161)]
    src = [torch.ones(1) for _ in range(161)]
    fn = {"fused ema_": lambda: ops.ema_(dst, src, 0.999),
          "torch._foreach_lerp_": lambda: torch._foreach_lerp_(dst, src, 0.001)}[impl]
    _bench(benchmark, "host: ema_ 161 tiny tensors (cpu, 1 thread)", fn)


@pytest.mark.parametrize("impl", ["fused enqueue_", "index_copy_ (reference)", "slice assignment"])
def test_host_enqueue_tiny(benchmark, impl):
    queue, ptr, keys = torch.zeros(64, 8), torch.zeros(1, dtype=torch.long), torch.randn(4, 8)

    def slice_assign():  # the original code's way: the pointer as a host int
        p = int(ptr)
        queue[p:p + 4] = keys
        ptr[0] = (p + 4) % 64

    fn = {"fused enqueue_": lambda: ops.enqueue_(queue, ptr, keys),
          "index_copy_ (reference)": lambda: ops.enqueue_reference_(queue, ptr, keys),
          "slice assignment": slice_assign}[impl]
    _bench(benchmark, "host: enqueue_ N=4 into K=64 (cpu, 1 thread)", fn)


@pytest.mark.parametrize("impl", ["fused infonce", "two GEMMs + cross_entropy"])
def test_host_infonce_tiny(benchmark, impl):
    q = F.normalize(torch.randn(8, 16), dim=1).requires_grad_()
    k, queue = F.normalize(torch.randn(8, 16), dim=1), F.normalize(torch.randn(64, 16), dim=1)
    loss = ops.infonce if impl == "fused infonce" else ops.infonce_reference

    def run():
        loss(q, k, queue, 0.2).backward()
        q.grad = None

    _bench(benchmark, "host: infonce fwd+bwd N=8 K=64 C=16 (cpu, 1 thread)", run)


@pytest.mark.parametrize("impl", ["fused infonce_inbatch", "GEMM + cross_entropy"])
def test_host_infonce_inbatch_tiny(benchmark, impl):
    q = F.normalize(torch.randn(8, 16), dim=1).requires_grad_()
    keys = F.normalize(torch.randn(64, 16), dim=1)
    loss = ops.infonce_inbatch if impl == "fused infonce_inbatch" else ops.infonce_inbatch_reference

    def run():
        loss(q, keys, 8, 0.2).backward()
        q.grad = None

    _bench(benchmark, "host: infonce_inbatch fwd+bwd N=8 M=64 C=16 (cpu, 1 thread)", run)
