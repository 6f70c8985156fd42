import pytest
import torch

from conftest import cuda_only
from fastmoco import ops

TOLS = [(torch.float64, 1e-12, 1e-12), (torch.float32, 1e-6, 1e-6), (torch.float16, 1e-3, 1e-3),
        (torch.bfloat16, 1e-2, 1e-2)]
SHAPES = [(3,), (7, 5), (64, 3, 3, 3), (1,), (1000,)]


def _pairs(dtype, device="cpu"):
    return ([torch.randn(s, device=device).to(dtype) for s in SHAPES],
            [torch.randn(s, device=device).to(dtype) for s in SHAPES])


@pytest.mark.parametrize("dtype,atol,rtol", TOLS)
@pytest.mark.parametrize("momentum", [0.0, 0.3, 0.99, 1.0])
def test_matches_float64(dtype, atol, rtol, momentum):
    dst, src = _pairs(dtype)
    expect = [momentum * d.double() + (1 - momentum) * s.double() for d, s in zip(dst, src)]
    ops.ema_(dst, src, momentum)
    for d, e in zip(dst, expect):
        torch.testing.assert_close(d.double(), e, atol=atol, rtol=rtol)


def test_momentum_one_keeps_dst_and_zero_copies_src_exactly():
    dst, src = _pairs(torch.float32)
    before = [d.clone() for d in dst]
    ops.ema_(dst, src, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(dst, before))
    ops.ema_(dst, src, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(dst, src))


def test_matches_reference_loop_and_accepts_generators():
    a = torch.nn.Linear(5, 3)
    b = torch.nn.Linear(5, 3)
    ref = [p.detach().clone() for p in a.parameters()]
    ops.ema_reference_(ref, [p.detach() for p in b.parameters()], 0.9)
    ops.ema_(a.parameters(), b.parameters(), 0.9)  # generators; parameters that require grad
    for p, r in zip(a.parameters(), ref):
        torch.testing.assert_close(p.detach(), r)


def test_ema_module_with_buffers():
    tgt, src = torch.nn.BatchNorm1d(4), torch.nn.BatchNorm1d(4)
    src.running_mean.fill_(2.0)
    ops.EMA(tgt, src, include_buffers=True)(0.5)
    assert torch.allclose(tgt.running_mean, torch.full((4,), 1.0))
    assert tgt.num_batches_tracked.item() == 0  # integer buffers are left alone


def test_opcheck():
    dst, src = _pairs(torch.float32)
    torch.library.opcheck(torch.ops.fastmoco.ema_.default, (dst, src, 0.9))


def test_compile_fullgraph_with_enqueue():
    dst, src = _pairs(torch.float32)
    queue, ptr, keys = torch.zeros(10, 4), torch.zeros(1, dtype=torch.long), torch.randn(3, 4)
    expect = [0.9 * d + 0.1 * s for d, s in zip(dst, src)]

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(dst, src, queue, ptr, keys):
        ops.ema_(dst, src, 0.9)
        ops.enqueue_(queue, ptr, keys)

    step(dst, src, queue, ptr, keys)
    for d, e in zip(dst, expect):
        torch.testing.assert_close(d, e)
    assert torch.equal(queue[:3], keys) and ptr.item() == 3


@pytest.mark.parametrize("dst,src,momentum,err,match", [
    ([torch.zeros(3)], [torch.zeros(3), torch.zeros(3)], 0.9, ValueError, "dst has 1 tensors but src has 2"),
    ([torch.zeros(3)], [torch.zeros(4)], 0.9, ValueError, "shape mismatch at index 0"),
    ([torch.zeros(3)], [torch.zeros(3)], 1.5, ValueError, "momentum must be in"),
    ([torch.zeros(3)], [torch.zeros(3)], -0.1, ValueError, "momentum must be in"),
    ([torch.zeros(3)], [torch.zeros(3, dtype=torch.float64)], 0.9, TypeError, "dtype mismatch"),
    ([torch.zeros(3, dtype=torch.long)], [torch.zeros(3, dtype=torch.long)], 0.9, TypeError, "floating"),
])
def test_bad_inputs(dst, src, momentum, err, match):
    before = [d.clone() for d in dst]
    with pytest.raises(err, match=match):
        ops.ema_(dst, src, momentum)
    assert all(torch.equal(a, b) for a, b in zip(dst, before))


@cuda_only
@pytest.mark.parametrize("dtype,atol,rtol", TOLS[1:])
def test_cuda_fused_matches_float64(dtype, atol, rtol):
    dst, src = _pairs(dtype, "cuda")
    dst.append(torch.randn(6, 4, device="cuda").to(dtype).T)  # non-dense pair: foreach fallback
    src.append(torch.randn(4, 6, device="cuda").to(dtype))
    expect = [0.99 * d.double() + 0.01 * s.double() for d, s in zip(dst, src)]
    ops.ema_(dst, src, 0.99)
    for d, e in zip(dst, expect):
        torch.testing.assert_close(d.double(), e, atol=atol, rtol=rtol)
