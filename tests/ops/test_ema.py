import pytest
import torch

from helpers import cuda_only
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
    with pytest.raises(err, match=match):  # through the dispatcher (compiled code, modes): the same message
        torch.ops.fastmoco.ema_(dst, src, momentum)
    assert all(torch.equal(a, b) for a, b in zip(dst, before))


def test_a_non_tensor_element_is_named():
    with pytest.raises(TypeError, match=r"src\[1\] must be a torch.Tensor"):
        ops.ema_([torch.zeros(2), torch.zeros(2)], [torch.zeros(2), [0.0, 0.0]], 0.9)


def _python_checks():
    from fastmoco.ops import ema as ema_mod
    return ema_mod.CHECKS["python"]


def test_good_calls_never_run_the_python_check_and_a_bad_one_runs_it_once():
    dst, src = _pairs(torch.float32)
    before = _python_checks()
    for _ in range(3):
        ops.ema_(dst, src, 0.9)
    assert _python_checks() == before  # the C++ pass alone said yes
    with pytest.raises(ValueError, match="shape mismatch at index 1"):
        ops.ema_(dst, [src[0], torch.zeros(2), *src[2:]], 0.9)
    assert _python_checks() == before + 1


def test_a_training_step_runs_the_python_check_zero_times():
    from fastmoco.models import MoCo
    from fastmoco.train import TrainConfig
    from fastmoco.runs.distributed import ProcessGroup
    from fastmoco.train.step import MocoStep

    cfg = TrainConfig(width=4, K=32, batch_size=8, bn_splits=2, dim=16).resolved().for_runtime("cpu", 1)
    model = MoCo.from_config(cfg, 1)
    step = MocoStep(model, torch.optim.SGD(model.encoder_q.parameters(), lr=0.1), cfg, ProcessGroup())
    views = [(torch.randn(8, 1, 32, 32), torch.randn(8, 1, 32, 32))]
    step(views, 0.99)
    before = _python_checks()
    for _ in range(2):
        step(views, 0.99)
    assert _python_checks() == before


def test_a_list_changed_after_a_good_call_is_still_checked_and_nothing_is_written():
    """Nothing is remembered between calls: a parameter whose tensor was swapped for another shape or dtype (as
    module.to() and .data assignments do) is caught on the next call."""
    dst, src = _pairs(torch.float32)
    ops.ema_(dst, src, 0.9)
    for change, err, match in ((lambda: setattr(src[3], "data", torch.zeros(2)), ValueError, "shape mismatch at index 3"),
                               (lambda: setattr(dst[2], "data", dst[2].data.double()), TypeError, "dtype mismatch")):
        fresh = _pairs(torch.float32)
        dst, src = fresh
        ops.ema_(dst, src, 0.9)
        change()
        before = [d.clone() for d in dst]
        with pytest.raises(err, match=match):
            ops.ema_(dst, src, 0.9)
        assert all(torch.equal(a, b) for a, b in zip(dst, before))


def test_a_dispatch_mode_sees_the_op():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    dst, src = _pairs(torch.float32)
    expect = [0.5 * d + 0.5 * s for d, s in zip(dst, src)]
    with Seen() as mode:
        ops.ema_(dst, src, 0.5)
    assert "fastmoco.ema_.default" in mode.ops  # eager calls skip the dispatcher only outside modes
    for d, e in zip(dst, expect):
        torch.testing.assert_close(d, e)


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
