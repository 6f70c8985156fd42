"""InfoNCE over in-batch keys (MoCo v3, SimCLR-style losses) without materialising the (N, M) logits.

Row i of q has its positive at row ``offset + i`` of ``keys`` (under torch.distributed: the keys of the whole
global batch, ``offset = N * rank``), and every key is a candidate:

    infonce_inbatch(q, keys, offset, T) == F.cross_entropy(q @ keys.T / T, arange(N) + offset)

Reading order as in ``infonce.py``: the argument check -> CPU path (chunked online log-sum-exp) -> the kernels of
``fastmoco::infonce_inbatch`` (schema in ``_library``) -> public :func:`infonce_inbatch` -> :class:`InfoNCEInBatch`.
On CUDA it runs the fused InfoNCE's partial kernel over the keys (``kernels/infonce.py: inbatch_forward``), so its
launch configurations are those already compiled for sm_80/sm_90. The forward returns, per row, the loss and
W = sum_j p_j keys_j; the backward is then one line, dq = g/T (W - keys[offset + i]).

``keys`` is a constant, as in MoCo v3 (momentum-encoder keys, gathered without gradient): the op gives no gradient
to it. A loss that needs one (SimCLR, where the keys are the other view's queries) can call it twice with the roles
swapped, or use the reference.
"""
import torch
from torch import Tensor

from . import _checks, _library
from .infonce import TemperatureLoss, _acc_dtype, check_reduction, device_kernels, reduce, stream_keys
from .reference import infonce_inbatch_reference  # noqa: F401  (importable beside the fused op)


def _forward_chunked(q: Tensor, keys: Tensor, offset: int, temperature: float):
    """The keys streamed in chunks with a running max/sum (``infonce.stream_keys``); fp32 (float64) accumulation."""
    N, C = q.shape
    acc = _acc_dtype(q.dtype)
    qs = q.to(acc) / temperature  # (N, C) scaled queries
    m = torch.full((N,), float("-inf"), device=q.device, dtype=acc)  # (N,) running max of an empty sum
    w = torch.zeros((N, C), device=q.device, dtype=acc)  # (N, C)
    m, l, w = stream_keys(qs, keys, m, torch.zeros_like(m), w)
    pos = (qs * keys[offset:offset + N].to(acc)).sum(1)  # (N,) positive logits
    return m + torch.log(l) - pos, w / l[:, None]


def _check_args(q, keys, offset, temperature) -> None:
    """Every check of the op's arguments: each kernel and the fake kernel run it (the public function only
    ``_checks.schema_types``, so a call is checked once)."""
    for name, x in (("q", q), ("keys", keys)):
        _checks.tensor(name, x)
    _checks.rank("q", q, 2, "(N, C)")
    _checks.rank("keys", keys, 2, "(M, C)")
    for name, x in (("q", q), ("keys", keys)):
        _checks.float_dtype(name, x)
    _checks.same("dtype", ("q", "keys"), (q.dtype, keys.dtype))
    _checks.same("device", ("q", "keys"), (q.device, keys.device))
    if keys.shape[1] != q.shape[1]:
        raise ValueError(f"keys has C={keys.shape[1]} columns but q has C={q.shape[1]}")
    if q.shape[0] == 0:
        raise ValueError("need N >= 1 query rows, got 0")
    _checks.python_int("offset", offset)
    if not 0 <= offset <= keys.shape[0] - q.shape[0]:
        raise ValueError(f"offset must be in [0, M - N] = [0, {keys.shape[0] - q.shape[0]}] so that every row's "
                         f"positive keys[offset + i] exists (N={q.shape[0]}, M={keys.shape[0]}), got {offset}")
    _checks.number_in("temperature", temperature, 0.0, float("inf"), lo_open=True)


# The op returns fp32 (float64 for float64 inputs) per-row loss (N,) and W (N, C), saved for the backward.
_inbatch_cpu, _inbatch_cuda = device_kernels(_check_args, _forward_chunked, "inbatch_forward")


def _inbatch_fake(q, keys, offset, temperature):
    _check_args(q, keys, offset, temperature)
    N, C = q.shape
    acc = _acc_dtype(q.dtype)
    return q.new_empty((N,), dtype=acc), q.new_empty((N, C), dtype=acc)


_library.register("infonce_inbatch", cpu=_inbatch_cpu, cuda=_inbatch_cuda, fake=_inbatch_fake)


def _setup_context(ctx, inputs, output):
    q, keys, offset, temperature = inputs
    _loss, w = output
    ctx.mark_non_differentiable(w)
    ctx.save_for_backward(q, keys, w)
    ctx.offset, ctx.temperature = offset, temperature


def _backward(ctx, g_loss, _g_w):
    q, keys, w = ctx.saved_tensors
    dq = None
    if ctx.needs_input_grad[0]:
        g = g_loss / ctx.temperature  # (N,) in the accumulation dtype
        pos = keys[ctx.offset:ctx.offset + q.shape[0]].to(w.dtype)  # (N, C) each row's positive key
        dq = (g[:, None] * (w - pos)).to(q.dtype)  # (N, C)
    return dq, None, None, None


torch.library.register_autograd(_library.qualname("infonce_inbatch"), _backward, setup_context=_setup_context,
                                lib=_library.LIBRARY)

def infonce_inbatch(q: Tensor, keys: Tensor, offset: int = 0, temperature: float = 1.0,
                    reduction: str = "mean") -> Tensor:
    """Cross-entropy of q @ keys.T / T against labels arange(N) + offset, without the (N, M) logits.

    q: (N, C); keys: (M, C), M >= N + offset, a constant (no gradient). Returns a scalar, or (N,) for
    reduction="none", in q's dtype (accumulation is fp32).
    """
    _checks.schema_types(q=q, keys=keys, offset=offset, temperature=temperature)  # the full check: in the kernel
    check_reduction(reduction)
    rows = torch.ops.fastmoco.infonce_inbatch(q, keys.detach(), offset, float(temperature))[0]  # (N,) fp32
    return reduce(rows, reduction, q.dtype)


class InfoNCEInBatch(TemperatureLoss):
    """``nn.Module`` form of :func:`infonce_inbatch`: ``loss = InfoNCEInBatch(0.2)(q, keys, offset)``."""

    def __init__(self, temperature: float = 1.0, reduction: str = "mean"):
        super().__init__(temperature, reduction)

    def forward(self, q: Tensor, keys: Tensor, offset: int = 0) -> Tensor:
        return infonce_inbatch(q, keys, offset, self.temperature, self.reduction)
