"""EMA over ResNet-50's parameter set (fused ema_ vs torch._foreach_lerp_ vs the per-parameter loop) and the
queue write (enqueue_ vs the original code's slice assignment with int(ptr))."""
import pytest
import torch
import torchvision

from conftest import device_under_test, sync
from naive import naive_enqueue
from fastmoco import ops

DEV = device_under_test()


def _resnet50_params():
    q = [p.detach().to(DEV) for p in torchvision.models.resnet50().parameters()]  # 161 tensors, 25.6 M params
    k = [p.clone() + 0.01 for p in q]
    return k, q


def _ema_impls():
    return {
        "fused ema_": lambda k, q: ops.ema_(k, q, 0.999),
        "torch._foreach_lerp_": lambda k, q: torch._foreach_lerp_(k, q, 0.001),
        "per-parameter loop": lambda k, q: ops.ema_reference_(k, q, 0.999),
    }


@pytest.mark.parametrize("impl", list(_ema_impls()))
def test_ema_resnet50(benchmark, impl):
    k, q = _resnet50_params()
    fn = _ema_impls()[impl]
    benchmark.group = f"ema ResNet-50 params (25.6 M fp32) {DEV.type}"
    n = sum(p.numel() for p in q)
    benchmark.extra_info["params"] = n

    def run():
        fn(k, q)
        sync(DEV)

    run()
    benchmark.pedantic(run, rounds=30, warmup_rounds=2)
    benchmark.extra_info["GB_per_s(12 B/param)"] = round(12 * n / benchmark.stats.stats.min / 1e9, 1)


@pytest.mark.parametrize("impl", ["enqueue_", "reference (index_copy_)", "naive int(ptr) slice"])
def test_enqueue_k65536(benchmark, impl):
    queue = torch.randn(65536, 128, device=DEV)
    ptr = torch.zeros(1, dtype=torch.long, device=DEV)
    keys = torch.randn(256, 128, device=DEV)
    fn = {"enqueue_": ops.enqueue_, "reference (index_copy_)": ops.enqueue_reference_,
          "naive int(ptr) slice": naive_enqueue}[impl]
    benchmark.group = f"enqueue N=256 into K=65536 C=128 fp32 {DEV.type}"

    def run():
        fn(queue, ptr, keys)
        sync(DEV)

    benchmark.pedantic(run, rounds=200, warmup_rounds=5)
