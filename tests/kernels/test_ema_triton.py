"""The multi-tensor EMA Triton kernel under the interpreter, on CPU tensors."""
import pytest
import torch

from fastmoco import ops

pytest.importorskip("triton")
from fastmoco.kernels import INTERPRET  # noqa: E402

if not INTERPRET:
    pytest.skip("needs TRITON_INTERPRET=1", allow_module_level=True)
from fastmoco.kernels.ema import BLOCK, ITERS, ema_ as ema_triton_  # noqa: E402

TOLS = [(torch.float32, 1e-6, 1e-6), (torch.float16, 1e-3, 1e-3), (torch.bfloat16, 1e-2, 1e-2)]


@pytest.mark.parametrize("dtype,atol,rtol", TOLS)
@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.999, 1.0])
def test_kernel_matches_float64_loop(dtype, atol, rtol, momentum):
    shapes = [(3,), (7, 5), (BLOCK * ITERS + 3,), (2, 3, 3, 3), (1,)]  # odd sizes, one past a program's chunk
    dst = [torch.randn(s).to(dtype) for s in shapes]
    src = [torch.randn(s).to(dtype) for s in shapes]
    expect = [momentum * d.double() + (1 - momentum) * s.double() for d, s in zip(dst, src)]
    ema_triton_(dst, src, momentum)
    for d, e in zip(dst, expect):
        torch.testing.assert_close(d.double(), e, atol=atol, rtol=rtol)


def test_kernel_mixed_dtypes_one_call():
    dst = [torch.zeros(10), torch.zeros(4, dtype=torch.float16)]
    src = [torch.ones(10), torch.ones(4, dtype=torch.float16)]
    ema_triton_(dst, src, 0.75)
    assert torch.all(dst[0] == 0.25) and torch.all(dst[1] == 0.25)


def test_kernel_channels_last_pairs():
    d = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    s = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    expect = 0.9 * d + 0.1 * s
    ema_triton_([d], [s], 0.9)
    torch.testing.assert_close(d, expect)
