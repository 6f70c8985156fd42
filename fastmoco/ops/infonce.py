"""InfoNCE over a queue of negatives without materialising the (N, 1+K) logits.

Reading order: the argument check -> CPU path (chunked online log-sum-exp) -> the kernels of ``fastmoco::infonce``
(schema in ``_library``: CPU, CUDA, fake, autograd) -> public :func:`infonce` -> :class:`InfoNCE` module. The
CUDA kernels live in ``kernels/infonce.py``; the naive reference is :func:`fastmoco.ops.reference.infonce_reference`.

Both paths return, per row, the loss, the positive's probability p0 and W = sum_j p_j queue_j, so the backward is
two element-wise lines: dq = g/T (W + (p0 - 1) k), dk = g/T (p0 - 1) q.
"""
import torch
from torch import Tensor

from . import _checks, _library
from .reference import infonce_reference  # noqa: F401  (importable beside the fused op)

try:
    from fastmoco import kernels as _kernels
except ImportError:  # a copy of fastmoco/ without kernels/ beside it
    _kernels = None

# Logit tile of the CPU path: N x CHUNK_ELEMS/N fp32 values. 2**17 elements (512 KiB, L2-sized) measured
# fastest of 2**16 .. 2**21 at N=256, C=128, K=65536 fwd+bwd on the 2-core dev CPU: 59 ms vs 66 (2**16),
# 62 (2**18), 80 (2**19), 81 (2**20), 72 (2**21); the naive path took 205 ms in the same run.
CHUNK_ELEMS = 1 << 17


def _forward_chunked(q: Tensor, k: Tensor, queue: Tensor, temperature: float):
    """Stream the queue in chunks with a running max/sum (online log-sum-exp); fp32 (float64) accumulation."""
    N, C = q.shape
    acc = _acc_dtype(q.dtype)
    qs = q.to(acc) / temperature  # (N, C) scaled queries
    pos = (qs * k.to(acc)).sum(1)  # (N,) positive logits
    w = torch.zeros((N, C), device=q.device, dtype=acc)  # (N, C) running sum of exp(logit - m) key
    # the positive starts the running max and sum: m = pos, l = exp(pos - m) = 1
    m, l, w = stream_keys(qs, queue, pos.clone(), torch.ones_like(pos), w)
    lse = m + torch.log(l)  # (N,)
    return lse - pos, torch.exp(pos - lse), w / l[:, None]  # W = sum_j p_j key_j


def stream_keys(qs: Tensor, keys: Tensor, m: Tensor, l: Tensor, w: Tensor):
    """Online log-sum-exp of the logits qs @ keys.T, a chunk of keys at a time: the running max m (N,), sum
    l = sum exp(logit - m) (N,) and weighted key sum w (N, C, updated in place), continued from the values given."""
    chunk = max(64, CHUNK_ELEMS // max(qs.shape[0], 1))
    for start in range(0, keys.shape[0], chunk):
        tile = keys[start:start + chunk].to(qs.dtype)  # (Kc, C)
        s = qs @ tile.T  # (N, Kc) logits of this chunk only
        m_new = torch.maximum(m, s.amax(1))
        alpha = torch.exp(m - m_new)  # (N,); exp(-inf) = 0 when starting from an empty sum
        s.sub_(m_new[:, None]).exp_()  # (N, Kc) unnormalised probabilities
        l = l * alpha + s.sum(1)
        w.mul_(alpha[:, None]).addmm_(s, tile)
        m = m_new
    return m, l, w


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _use_triton(q: Tensor) -> bool:
    return (_kernels is not None and q.is_cuda and _kernels.available(q.device) and q.shape[1] <= 256
            and q.dtype != torch.float64)


def _check_args(q, k, queue, temperature) -> None:
    """Every check of the op's arguments: each kernel and the fake kernel run it (the public function only
    ``_checks.schema_types``, so a call is checked once)."""
    for name, x in (("q", q), ("k", k), ("queue", queue)):
        _checks.tensor(name, x)
    _checks.rank("q", q, 2, "(N, C)")
    _checks.rank("k", k, 2, "(N, C)")
    _checks.rank("queue", queue, 2, "(K, C)")
    for name, x in (("q", q), ("k", k), ("queue", queue)):
        _checks.float_dtype(name, x)
    _checks.same("dtype", ("q", "k", "queue"), (q.dtype, k.dtype, queue.dtype))
    _checks.same("device", ("q", "k", "queue"), (q.device, k.device, queue.device))
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape (N, C), got {tuple(q.shape)} and {tuple(k.shape)}")
    if queue.shape[1] != q.shape[1]:
        raise ValueError(f"queue has C={queue.shape[1]} columns but q has C={q.shape[1]}")
    if q.shape[0] == 0 or queue.shape[0] == 0:
        raise ValueError(f"need N >= 1 and K >= 1, got N={q.shape[0]}, K={queue.shape[0]}")
    _checks.number_in("temperature", temperature, 0.0, float("inf"), lo_open=True)


def device_kernels(check, chunked, launcher: str):
    """The CPU and CUDA kernels of an InfoNCE op: its argument check, then on a GPU that runs Triton the launcher
    named ``launcher`` in kernels/infonce.py, else the chunked PyTorch path; both outside autocast (the op
    computes in its inputs' dtypes, accumulating in fp32)."""
    def cpu(*args):
        check(*args)
        with torch.autocast("cpu", enabled=False):
            return chunked(*args)

    def cuda(*args):
        check(*args)
        if _use_triton(args[0]):
            from fastmoco.kernels import infonce as launchers

            return getattr(launchers, launcher)(*args)
        with torch.autocast("cuda", enabled=False):
            return chunked(*args)

    return cpu, cuda


# The op returns fp32 (float64 for float64 inputs) per-row loss (N,), p0 (N,) and W (N, C); the last two are
# saved for backward.
_infonce_cpu, _infonce_cuda = device_kernels(_check_args, _forward_chunked, "infonce_forward")


def _infonce_fake(q, k, queue, temperature):
    _check_args(q, k, queue, temperature)
    N, C = q.shape
    acc = _acc_dtype(q.dtype)
    return q.new_empty((N,), dtype=acc), q.new_empty((N,), dtype=acc), q.new_empty((N, C), dtype=acc)


_library.register("infonce", cpu=_infonce_cpu, cuda=_infonce_cuda, fake=_infonce_fake)


def _setup_context(ctx, inputs, output):
    q, k, _queue, temperature = inputs
    _loss, p0, w = output
    ctx.mark_non_differentiable(p0, w)
    ctx.save_for_backward(q, k, p0, w)
    ctx.temperature = temperature


def _backward(ctx, g_loss, _g_p0, _g_w):
    q, k, p0, w = ctx.saved_tensors
    g = g_loss / ctx.temperature  # (N,) in the accumulation dtype
    coef = p0 - 1.0  # (N,) d loss / d positive logit
    dq = dk = None
    if ctx.needs_input_grad[0]:
        dq = (g[:, None] * (w + coef[:, None] * k.to(w.dtype))).to(q.dtype)  # (N, C)
    if ctx.needs_input_grad[1]:
        dk = ((g * coef)[:, None] * q.to(w.dtype)).to(k.dtype)  # (N, C)
    return dq, dk, None, None


torch.library.register_autograd(_library.qualname("infonce"), _backward, setup_context=_setup_context,
                                lib=_library.LIBRARY)

_REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def reduce(rows: Tensor, reduction: str, dtype: torch.dtype) -> Tensor:
    """Per-row fp32 losses (N,) reduced as asked, in the inputs' dtype."""
    out = rows.mean() if reduction == "mean" else rows.sum() if reduction == "sum" else rows
    return out.to(dtype)


class TemperatureLoss(torch.nn.Module):
    """What the loss modules share: a checked temperature and reduction."""

    def __init__(self, temperature: float, reduction: str):
        super().__init__()
        self.temperature = _checks.number_in("temperature", temperature, 0.0, float("inf"), lo_open=True)
        check_reduction(reduction)
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, reduction={self.reduction!r}"


def infonce(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.07, reduction: str = "mean") -> Tensor:
    """Cross-entropy of [q.k, q @ queue.T] / T against label 0, without the (N, 1+K) logits.

    q, k: (N, C); queue: (K, C), one negative key per row, treated as a constant. Returns a scalar, or (N,) for
    reduction="none", in q's dtype (accumulation is fp32).
    """
    _checks.schema_types(q=q, k=k, queue=queue, temperature=temperature)  # the full check: in the kernel
    check_reduction(reduction)
    rows = torch.ops.fastmoco.infonce(q, k, queue.detach(), float(temperature))[0]  # (N,) fp32
    return reduce(rows, reduction, q.dtype)


class InfoNCE(TemperatureLoss):
    """``nn.Module`` form of :func:`infonce` (lightly/timm style: ``loss = InfoNCE(0.2)(q, k, queue)``)."""

    def __init__(self, temperature: float = 0.07, reduction: str = "mean"):
        super().__init__(temperature, reduction)

    def forward(self, q: Tensor, k: Tensor, queue: Tensor) -> Tensor:
        return infonce(q, k, queue, self.temperature, self.reduction)
