import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import DTYPE_TOLS, cuda_only
from fastmoco import ops
infonce_mod = importlib.import_module("fastmoco.ops.infonce")  # the module (ops.infonce is the function)

SHAPES = [(1, 8, 17), (5, 130, 17), (16, 128, 1000), (33, 64, 257)]  # (N, C, K): N=1, C not 2^k, K odd


def _inputs(N, C, K, dtype, scale=1.0, device="cpu"):
    q = (F.normalize(torch.randn(N, C, dtype=torch.float64), dim=1) * scale).to(dtype)
    k = (F.normalize(torch.randn(N, C, dtype=torch.float64), dim=1) * scale).to(dtype)
    queue = F.normalize(torch.randn(K, C, dtype=torch.float64), dim=1).to(dtype)
    return q.to(device).requires_grad_(), k.to(device).requires_grad_(), queue.to(device)


def _reference64(q, k, queue, T, reduction):
    q64 = q.detach().double().requires_grad_()
    k64 = k.detach().double().requires_grad_()
    out = ops.infonce_reference(q64, k64, queue.double(), T, reduction)
    return out, q64, k64


@pytest.fixture(params=[None, 64], ids=["one-chunk", "many-chunks"])
def chunk(request, monkeypatch):
    if request.param:  # force the online log-sum-exp across several queue chunks
        monkeypatch.setattr(infonce_mod, "CHUNK_ELEMS", request.param)
    return request.param


@pytest.mark.parametrize("dtype,atol,rtol", DTYPE_TOLS)
@pytest.mark.parametrize("N,C,K", SHAPES)
@pytest.mark.parametrize("T", [0.07, 0.2, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_values_and_grads_match_float64(dtype, atol, rtol, N, C, K, T, reduction, chunk):
    q, k, queue = _inputs(N, C, K, dtype)
    out = ops.infonce(q, k, queue, T, reduction)
    ref, q64, k64 = _reference64(q, k, queue, T, reduction)
    assert out.dtype == dtype and out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref.detach(), atol=atol, rtol=rtol)
    g = torch.randn_like(ref)
    dq, dk = torch.autograd.grad(out, (q, k), g.to(dtype))
    dq64, dk64 = torch.autograd.grad(ref, (q64, k64), g)
    torch.testing.assert_close(dq.double(), dq64, atol=atol, rtol=rtol)
    torch.testing.assert_close(dk.double(), dk64, atol=atol, rtol=rtol)


def test_identical_embeddings_give_log_k_plus_one():
    K = 999
    v = F.normalize(torch.randn(1, 32, dtype=torch.float64), dim=1)
    q, k, queue = v.repeat(4, 1), v.repeat(4, 1), v.repeat(K, 1)
    loss = ops.infonce(q, k, queue, 0.07, "none")
    torch.testing.assert_close(loss, torch.full((4,), math.log(K + 1), dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_unnormalised_inputs_do_not_overflow(dtype, chunk):
    q, k, queue = _inputs(8, 64, 300, dtype, scale=30.0)  # logits up to ~30*30/0.07 = 12,857
    queue = queue * 30
    out = ops.infonce(q, k, queue, 0.07, "none")
    ref, _, _ = _reference64(q, k, queue, 0.07, "none")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref.detach(), atol=1e-2, rtol=1e-5)


def test_gradcheck_float64():
    q, k, queue = _inputs(3, 5, 7, torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: ops.infonce(a, b, queue, 0.2, "none"), (q, k))


def test_queue_gets_no_gradient_and_is_unchanged():
    q, k, queue = _inputs(4, 8, 9, torch.float32)
    queue = queue.clone().requires_grad_()
    before = queue.detach().clone()
    ops.infonce(q, k, queue).backward()
    assert queue.grad is None and torch.equal(queue.detach(), before)


def test_opcheck():
    q, k, queue = _inputs(4, 12, 37, torch.float32)
    torch.library.opcheck(torch.ops.fastmoco.infonce.default, (q, k, queue, 0.2))
    torch.library.opcheck(torch.ops.fastmoco.infonce.default, (q.detach(), k.detach(), queue, 0.07))


def test_compile_fullgraph_matches_eager():
    q, k, queue = _inputs(6, 16, 50, torch.float32)
    fn = torch.compile(lambda a, b, c: ops.infonce(a, b, c, 0.2), fullgraph=True, backend="aot_eager")
    out = fn(q, k, queue)
    out.backward()
    dq = q.grad.clone()
    q.grad = None
    eager = ops.infonce(q, k, queue, 0.2)
    eager.backward()
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(dq, q.grad)


def test_module_wrapper():
    q, k, queue = _inputs(4, 8, 9, torch.float32)
    mod = ops.InfoNCE(temperature=0.2, reduction="sum")
    torch.testing.assert_close(mod(q, k, queue), ops.infonce_reference(q, k, queue, 0.2, "sum"))
    assert "temperature=0.2" in repr(mod)


@pytest.mark.parametrize("args,err,match", [
    (dict(q=torch.randn(4)), ValueError, "q must be 2-D"),
    (dict(queue=torch.randn(3, 7)), ValueError, "queue has C=7"),
    (dict(k=torch.randn(3, 8)), ValueError, "same shape"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(temperature=-1), ValueError, "temperature"),
    (dict(reduction="avg"), ValueError, "reduction"),
    (dict(q=torch.ones(4, 8, dtype=torch.long)), TypeError, "q must be a floating dtype"),
    (dict(k=torch.randn(4, 8, dtype=torch.float64)), TypeError, "dtype mismatch"),
    (dict(queue=torch.randn(0, 8)), ValueError, "K >= 1"),
    (dict(q=[[1.0]]), TypeError, "torch.Tensor"),
])
def test_bad_inputs_raise_clear_errors(args, err, match):
    base = dict(q=torch.randn(4, 8), k=torch.randn(4, 8), queue=torch.randn(9, 8), temperature=0.1,
                reduction="mean")
    base.update(args)
    with pytest.raises(err, match=match):
        ops.infonce(**base)


@cuda_only
@pytest.mark.parametrize("dtype,atol,rtol", DTYPE_TOLS[1:])
@pytest.mark.parametrize("N,C,K", SHAPES + [(256, 128, 65536)])
def test_cuda_fused_matches_float64(dtype, atol, rtol, N, C, K):
    q, k, queue = _inputs(N, C, K, dtype, device="cuda")
    out = ops.infonce(q, k, queue, 0.2, "none")
    ref, q64, k64 = _reference64(q, k, queue, 0.2, "none")
    torch.testing.assert_close(out.double(), ref.detach(), atol=atol, rtol=rtol)
    dq, dk = torch.autograd.grad(out.sum(), (q, k))
    dq64, dk64 = torch.autograd.grad(ref.sum(), (q64, k64))
    torch.testing.assert_close(dq.double(), dq64, atol=atol, rtol=rtol)
    torch.testing.assert_close(dk.double(), dk64, atol=atol, rtol=rtol)


@cuda_only
def test_cuda_compile_fullgraph():
    q, k, queue = _inputs(64, 128, 4096, torch.bfloat16, device="cuda")
    out = torch.compile(lambda a, b, c: ops.infonce(a, b, c, 0.2), fullgraph=True)(q, k, queue)
    torch.testing.assert_close(out.float(), ops.infonce_reference(q, k, queue, 0.2).float(), atol=3e-2, rtol=3e-2)


def test_inside_autocast_matches_outside():
    q, k, queue = _inputs(6, 16, 300, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = ops.infonce(q, k, queue, 0.2)
    torch.testing.assert_close(inside, ops.infonce(q, k, queue, 0.2))
