"""The Triton InfoNCE kernels themselves, run by the interpreter on CPU tensors (TRITON_INTERPRET=1)."""
import math

import pytest
import torch
import torch.nn.functional as F

from fastmoco import ops

triton = pytest.importorskip("triton")
from fastmoco.kernels import INTERPRET  # noqa: E402

if not INTERPRET:
    pytest.skip("needs TRITON_INTERPRET=1 before triton is imported (tests/conftest.py sets it)",
                allow_module_level=True)
from fastmoco.kernels.infonce import BLOCK_K, inbatch_forward, infonce_forward  # noqa: E402

# (dtype, atol, rtol) against float64; bf16 is upcast to fp32 inside the interpreted kernel (the
# interpreter's bf16 tl.dot returns wrong values)
TOLS = [(torch.float32, 1e-5, 1e-5), (torch.float16, 5e-3, 5e-3), (torch.bfloat16, 3e-2, 3e-2)]
SHAPES = [(1, 16, 17), (5, 130, 17), (20, 32, BLOCK_K * 3 + 5), (17, 64, 200)]  # N=1, C=130, K % tile != 0


def _check(q, k, queue, T, atol, rtol):
    loss, p0, w = infonce_forward(q, k, queue, T)
    q64 = q.double().requires_grad_()
    k64 = k.double().requires_grad_()
    ref = ops.infonce_reference(q64, k64, queue.double(), T, "none")
    torch.testing.assert_close(loss.double(), ref.detach(), atol=atol, rtol=rtol)
    # the backward formulas the op uses, from the kernel's saved p0 and W, against float64 autograd
    g = torch.randn(q.shape[0], dtype=torch.float64)
    dq64, dk64 = torch.autograd.grad(ref, (q64, k64), g)
    gt = (g / T).float()
    dq = gt[:, None] * (w + (p0 - 1)[:, None] * k.float())
    dk = (gt * (p0 - 1))[:, None] * q.float()
    torch.testing.assert_close(dq.double(), dq64, atol=atol, rtol=rtol)
    torch.testing.assert_close(dk.double(), dk64, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype,atol,rtol", TOLS)
@pytest.mark.parametrize("N,C,K", SHAPES)
@pytest.mark.parametrize("T", [0.07, 0.2, 1.0])
def test_kernel_matches_float64(dtype, atol, rtol, N, C, K, T):
    q = F.normalize(torch.randn(N, C), dim=1).to(dtype)
    k = F.normalize(torch.randn(N, C), dim=1).to(dtype)
    queue = F.normalize(torch.randn(K, C), dim=1).to(dtype)
    _check(q, k, queue, T, atol, rtol)


def test_kernel_any_strides():
    q = F.normalize(torch.randn(32, 6), dim=0).T  # (6, 32) non-contiguous
    k = F.normalize(torch.randn(6, 64), dim=1)[:, ::2]  # (6, 32) column stride 2
    queue = F.normalize(torch.randn(32, 90), dim=0).T  # (90, 32) transposed storage
    _check(q, k, queue, 0.2, 1e-5, 1e-5)


def test_kernel_large_unnormalised_inputs():
    q, k, queue = torch.randn(8, 32) * 20, torch.randn(8, 32) * 20, torch.randn(100, 32) * 20
    loss, _, _ = infonce_forward(q, k, queue, 0.07)
    ref = ops.infonce_reference(q.double(), k.double(), queue.double(), 0.07, "none")
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss.double(), ref, atol=5e-2, rtol=1e-5)


def test_kernel_identical_embeddings_give_log_k_plus_one():
    K = 150
    v = F.normalize(torch.randn(1, 16), dim=1)
    loss, p0, _ = infonce_forward(v.repeat(3, 1), v.repeat(3, 1), v.repeat(K, 1), 0.07)
    torch.testing.assert_close(loss, torch.full((3,), math.log(K + 1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(p0, torch.full((3,), 1 / (K + 1)), atol=1e-7, rtol=1e-5)


def test_autotune_stays_off_under_the_interpreter_and_splits_are_whole_tiles(monkeypatch):
    from fastmoco.kernels import infonce as nce

    monkeypatch.setenv("FASTMOCO_AUTOTUNE", "1")
    assert nce.INTERPRET and not nce.autotune_enabled()  # the interpreter cannot time kernels
    for K, splits, tile in ((65536, 264, 128), (1000, 7, 64), (5, 3, 32)):
        k_per_split, n = nce.split_queue(K, splits, tile)
        assert k_per_split % tile == 0 and n * k_per_split >= K > (n - 1) * k_per_split


@pytest.mark.parametrize("dtype,atol,rtol", TOLS)
@pytest.mark.parametrize("N,C,M,offset", [(1, 16, 17, 16), (5, 130, 17, 3), (20, 32, BLOCK_K * 3 + 5, 150),
                                          (17, 64, 200, 0)])
def test_inbatch_kernel_matches_float64(dtype, atol, rtol, N, C, M, offset):
    """The in-batch forward (partial kernel over every key, splits merged): loss, and the op's backward from W."""
    q = F.normalize(torch.randn(N, C), dim=1).to(dtype)
    keys = F.normalize(torch.randn(M, C), dim=1).to(dtype)
    loss, w = inbatch_forward(q, keys, offset, 0.2)
    q64 = q.double().requires_grad_()
    ref = ops.infonce_inbatch_reference(q64, keys.double(), offset, 0.2, "none")
    torch.testing.assert_close(loss.double(), ref.detach(), atol=atol, rtol=rtol)
    g = torch.randn(N, dtype=torch.float64)
    dq64, = torch.autograd.grad(ref, q64, g)
    dq = (g / 0.2).float()[:, None] * (w - keys[offset:offset + N].float())
    torch.testing.assert_close(dq.double(), dq64, atol=atol, rtol=rtol)


def test_inbatch_kernel_identical_embeddings_give_log_m():
    v = F.normalize(torch.randn(1, 16), dim=1)
    loss, _ = inbatch_forward(v.repeat(3, 1), v.repeat(150, 1), 40, 1.0)
    torch.testing.assert_close(loss, torch.full((3,), math.log(150)), atol=1e-5, rtol=0)
