import pytest
import torch

from helpers import cuda_only
from fastmoco import ops


def _oracle(queue, ptr, keys):
    """Row by row, as the contract states it."""
    queue, p = queue.clone(), int(ptr)
    for row in keys:
        queue[p] = row
        p = (p + 1) % queue.shape[0]
    return queue, p


CASES = [  # (K, C, N, ptr): in the middle, wrap-around, N == K, N > K, N > 2K, odd C, K not a multiple of N
    (10, 4, 3, 0), (10, 4, 3, 8), (10, 4, 10, 4), (10, 4, 13, 7), (5, 3, 17, 2), (7, 130, 4, 6), (1, 8, 3, 0),
]


@pytest.mark.parametrize("impl", ["op", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("K,C,N,p", CASES)
def test_matches_row_by_row_oracle(impl, dtype, K, C, N, p):
    queue = torch.randn(K, C).to(dtype)
    ptr = torch.tensor([p])
    keys = torch.randn(N, C).to(dtype)
    expect_q, expect_p = _oracle(queue, ptr, keys)
    (ops.enqueue_ if impl == "op" else ops.enqueue_reference_)(queue, ptr, keys)
    assert torch.equal(queue, expect_q)
    assert ptr.dtype == torch.int64 and ptr.item() == expect_p == (p + N) % K


def test_noncontiguous_keys_and_queue_view():
    storage = torch.zeros(6, 10)
    queue = storage[:, ::2]  # (6, 5) strided view
    keys = torch.randn(5, 4).T  # (4, 5) non-contiguous
    ptr = torch.tensor([4])
    expect_q, _ = _oracle(queue, ptr, keys)
    ops.enqueue_(queue, ptr, keys)
    assert torch.equal(queue, expect_q) and ptr.item() == 2


def test_keys_are_cast_to_the_queue_dtype():
    queue, ptr = torch.zeros(4, 2), torch.tensor([0])
    ops.enqueue_(queue, ptr, torch.ones(2, 2, dtype=torch.bfloat16))
    assert queue[:2].eq(1).all() and queue.dtype == torch.float32


@pytest.mark.parametrize("queue,ptr,keys,err,match", [
    (torch.zeros(5, 2), torch.tensor([5]), torch.ones(2, 2), ValueError, r"ptr=5 outside \[0, K=5\)"),
    (torch.zeros(5, 2), torch.tensor([-1]), torch.ones(2, 2), ValueError, "outside"),
    (torch.zeros(5, 2), torch.tensor([0], dtype=torch.int32), torch.ones(2, 2), TypeError, "int64"),
    (torch.zeros(5, 2), torch.tensor([0, 1]), torch.ones(2, 2), TypeError, "shape"),
    (torch.zeros(5, 2), torch.tensor([0]), torch.ones(2, 3), ValueError, "C=3"),
    (torch.zeros(5, 2), torch.tensor([0]), torch.ones(2), ValueError, "keys must be 2-D"),
    (torch.zeros(5, 2), torch.tensor([0]), torch.ones(0, 2), ValueError, "N >= 1"),
    (torch.zeros(5), torch.tensor([0]), torch.ones(2, 2), ValueError, "queue must be 2-D"),
])
def test_rejected_call_writes_nothing(queue, ptr, keys, err, match):
    q0, p0 = queue.clone(), ptr.clone()
    with pytest.raises(err, match=match):
        ops.enqueue_(queue, ptr, keys)
    assert torch.equal(queue, q0) and torch.equal(ptr, p0)


def test_native_extension_is_loaded():
    # the package build compiles csrc/; a missing .so would silently fall back to the reference
    assert ops.native_available(), "fastmoco._C not built: pip install --no-build-isolation -e ."


def test_opcheck():
    queue, ptr, keys = torch.randn(9, 4), torch.tensor([7]), torch.randn(5, 4)
    torch.library.opcheck(torch.ops.fastmoco.enqueue_.default, (queue, ptr, keys))


def test_compile_fullgraph():
    queue, ptr = torch.zeros(6, 3), torch.tensor([4])
    keys = torch.randn(5, 3)
    expect_q, expect_p = _oracle(queue, ptr, keys)
    torch.compile(ops.enqueue_, fullgraph=True, backend="aot_eager")(queue, ptr, keys)
    assert torch.equal(queue, expect_q) and ptr.item() == expect_p


@cuda_only
@pytest.mark.parametrize("K,C,N,p", CASES)
def test_cuda_matches_oracle_without_host_sync(K, C, N, p):
    queue, ptr, keys = torch.randn(K, C, device="cuda"), torch.tensor([p], device="cuda"), torch.randn(N, C, device="cuda")
    expect_q, expect_p = _oracle(queue, ptr, keys)
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside enqueue_ raises
    try:
        ops.enqueue_(queue, ptr, keys)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(queue, expect_q) and ptr.item() == expect_p


@cuda_only
def test_cuda_out_of_range_ptr_writes_nothing():
    queue, ptr = torch.zeros(5, 2, device="cuda"), torch.tensor([9], device="cuda")
    ops.enqueue_(queue, ptr, torch.ones(2, 2, device="cuda"))
    assert queue.eq(0).all() and ptr.item() == 9


def test_fallback_without_native_extension_warns_once_and_works():
    import subprocess
    import sys

    code = (
        "import sys, warnings\n"
        "sys.modules['fastmoco._C'] = None  # as if the extension were not built\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    from fastmoco import ops\n"
        "import torch\n"
        "assert not ops.native_available()\n"
        "assert sum('native extension unavailable' in str(x.message) for x in w) == 1, [str(x.message) for x in w]\n"
        "q, p = torch.zeros(4, 2), torch.tensor([3])\n"
        "ops.enqueue_(q, p, torch.ones(2, 2))\n"
        "assert q[3].eq(1).all() and q[0].eq(1).all() and p.item() == 1\n"
        "try:\n"
        "    ops.enqueue_(q, torch.tensor([7]), torch.ones(1, 2))\n"
        "except ValueError as e:\n"
        "    assert 'outside' in str(e)\n"
        "else:\n"
        "    raise SystemExit('bad ptr accepted')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
