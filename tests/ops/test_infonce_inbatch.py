"""``ops.infonce_inbatch``: in-batch InfoNCE (MoCo v3), row i's positive at keys[offset + i]: values and gradients
against float64 cross-entropy over the full logits, exact values, opcheck, torch.compile, errors, CUDA."""
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import DTYPE_TOLS, cuda_only
from fastmoco import ops

from test_infonce import chunk  # noqa: F401  (fixture: one chunk, or many; both CPU paths stream with it)

# (N, C, M, offset): N=1, C not a power of two, M odd, the positives at the start, the middle, the end of the keys
SHAPES = [(1, 8, 17, 0), (1, 8, 17, 16), (5, 130, 17, 6), (16, 128, 64, 48), (33, 64, 257, 100)]


def _inputs(N, C, M, dtype, scale=1.0, device="cpu"):
    q = (F.normalize(torch.randn(N, C, dtype=torch.float64), dim=1) * scale).to(dtype)
    keys = F.normalize(torch.randn(M, C, dtype=torch.float64), dim=1).to(dtype)
    return q.to(device).requires_grad_(), keys.to(device)


def _reference64(q, keys, offset, T, reduction):
    q64 = q.detach().double().requires_grad_()
    return ops.infonce_inbatch_reference(q64, keys.double(), offset, T, reduction), q64


@pytest.mark.parametrize("dtype,atol,rtol", DTYPE_TOLS)
@pytest.mark.parametrize("N,C,M,offset", SHAPES)
@pytest.mark.parametrize("T", [0.2, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_values_and_grads_match_float64(dtype, atol, rtol, N, C, M, offset, T, reduction, chunk):
    q, keys = _inputs(N, C, M, dtype)
    out = ops.infonce_inbatch(q, keys, offset, T, reduction)
    ref, q64 = _reference64(q, keys, offset, T, reduction)
    assert out.dtype == dtype and out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref.detach(), atol=atol, rtol=rtol)
    g = torch.randn_like(ref)
    dq, = torch.autograd.grad(out, q, g.to(dtype))
    dq64, = torch.autograd.grad(ref, q64, g)
    torch.testing.assert_close(dq.double(), dq64, atol=atol, rtol=rtol)


def test_identical_embeddings_give_log_m_exactly():
    M = 999
    v = F.normalize(torch.randn(1, 32, dtype=torch.float64), dim=1)
    loss = ops.infonce_inbatch(v.repeat(4, 1), v.repeat(M, 1), 7, 1.0, "none")  # every logit equal
    torch.testing.assert_close(loss, torch.full((4,), math.log(M), dtype=torch.float64), atol=1e-12, rtol=0)


def test_the_positive_is_the_offset_row():
    keys = torch.eye(6, dtype=torch.float64)  # row j is e_j: q = 10 e_j picks key j out of six
    q = 10 * torch.eye(6, dtype=torch.float64)[2:4]  # rows for keys 2 and 3
    right = ops.infonce_inbatch(q, keys, 2, 1.0, "none")
    wrong = ops.infonce_inbatch(q, keys, 0, 1.0, "none")
    expect = math.log(math.exp(10) + 5) - 10  # log-sum-exp of one logit 10 and five 0, minus 10
    torch.testing.assert_close(right, torch.full((2,), expect, dtype=torch.float64), atol=1e-12, rtol=0)
    assert (wrong > 9).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_unnormalised_inputs_do_not_overflow(dtype, chunk):
    q, keys = _inputs(8, 64, 300, dtype, scale=30.0)
    keys = keys * 30  # logits up to ~900 / 0.2
    out = ops.infonce_inbatch(q, keys, 100, 0.2, "none")
    ref, _ = _reference64(q, keys, 100, 0.2, "none")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref.detach(), atol=1e-2, rtol=1e-5)


def test_gradcheck_float64():
    q, keys = _inputs(3, 5, 9, torch.float64)
    assert torch.autograd.gradcheck(lambda a: ops.infonce_inbatch(a, keys, 4, 0.2, "none"), (q,))


def test_keys_get_no_gradient_and_are_unchanged():
    q, keys = _inputs(4, 8, 9, torch.float32)
    keys = keys.clone().requires_grad_()
    before = keys.detach().clone()
    ops.infonce_inbatch(q, keys, 2).backward()
    assert keys.grad is None and torch.equal(keys.detach(), before)


def test_opcheck():
    q, keys = _inputs(4, 12, 37, torch.float32)
    torch.library.opcheck(torch.ops.fastmoco.infonce_inbatch.default, (q, keys, 5, 0.2))
    torch.library.opcheck(torch.ops.fastmoco.infonce_inbatch.default, (q.detach(), keys, 0, 1.0))


def test_compile_fullgraph_matches_eager():
    q, keys = _inputs(6, 16, 24, torch.float32)
    fn = torch.compile(lambda a, b: ops.infonce_inbatch(a, b, 12, 0.2), fullgraph=True, backend="aot_eager")
    out = fn(q, keys)
    out.backward()
    dq = q.grad.clone()
    q.grad = None
    eager = ops.infonce_inbatch(q, keys, 12, 0.2)
    eager.backward()
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(dq, q.grad)


def test_module_wrapper_and_autocast():
    q, keys = _inputs(4, 8, 12, torch.float32)
    mod = ops.InfoNCEInBatch(temperature=0.2, reduction="sum")
    torch.testing.assert_close(mod(q, keys, 8), ops.infonce_inbatch_reference(q, keys, 8, 0.2, "sum"))
    assert "temperature=0.2" in repr(mod)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = ops.infonce_inbatch(q, keys, 8, 0.2)
    torch.testing.assert_close(inside, ops.infonce_inbatch(q, keys, 8, 0.2))


@pytest.mark.parametrize("args,err,match", [
    (dict(q=torch.randn(4)), ValueError, "q must be 2-D"),
    (dict(keys=torch.randn(9, 7)), ValueError, "keys has C=7"),
    (dict(offset=6), ValueError, r"offset must be in \[0, M - N\] = \[0, 5\]"),
    (dict(offset=-1), ValueError, "offset must be in"),
    (dict(offset=1.0), TypeError, "offset must be a Python int"),
    (dict(keys=torch.randn(3, 8)), ValueError, r"offset must be in \[0, M - N\] = \[0, -1\]"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(reduction="avg"), ValueError, "reduction"),
    (dict(q=torch.ones(4, 8, dtype=torch.long)), TypeError, "q must be a floating dtype"),
    (dict(keys=torch.randn(9, 8, dtype=torch.float64)), TypeError, "dtype mismatch"),
    (dict(q=torch.randn(0, 8)), ValueError, "N >= 1"),
    (dict(keys=[[1.0]]), TypeError, "torch.Tensor"),
])
def test_bad_inputs_raise_clear_errors(args, err, match):
    base = dict(q=torch.randn(4, 8), keys=torch.randn(9, 8), offset=0, temperature=0.1, reduction="mean")
    base.update(args)
    with pytest.raises(err, match=match):
        ops.infonce_inbatch(**base)
    # the op itself refuses the same call, where its schema lets the call through (reduction is the wrapper's)
    if "reduction" not in args and isinstance(base["keys"], torch.Tensor) and type(base["offset"]) is int:
        with pytest.raises(err, match=match):
            torch.ops.fastmoco.infonce_inbatch(base["q"], base["keys"], base["offset"], base["temperature"])


@cuda_only
@pytest.mark.parametrize("dtype,atol,rtol", DTYPE_TOLS[1:])
@pytest.mark.parametrize("N,C,M,offset", SHAPES + [(512, 256, 4096, 1536), (4096, 256, 32768, 4096 * 3)])
def test_cuda_fused_matches_float64(dtype, atol, rtol, N, C, M, offset):
    q, keys = _inputs(N, C, M, dtype, device="cuda")
    out = ops.infonce_inbatch(q, keys, offset, 0.2, "none")
    ref, q64 = _reference64(q, keys, offset, 0.2, "none")
    torch.testing.assert_close(out.double(), ref.detach(), atol=atol, rtol=rtol)
    dq, = torch.autograd.grad(out.sum(), q)
    dq64, = torch.autograd.grad(ref.sum(), q64)
    torch.testing.assert_close(dq.double(), dq64, atol=atol, rtol=rtol)


@cuda_only
def test_cuda_compile_fullgraph():
    q, keys = _inputs(64, 128, 512, torch.bfloat16, device="cuda")
    out = torch.compile(lambda a, b: ops.infonce_inbatch(a, b, 64, 0.2), fullgraph=True)(q, keys)
    torch.testing.assert_close(out.float(), ops.infonce_inbatch_reference(q, keys, 64, 0.2).float(), atol=3e-2,
                               rtol=3e-2)
