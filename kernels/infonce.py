"""Fused InfoNCE forward over a queue of negative keys, in two Triton kernels.

``_partial_kernel``: the grid is (row blocks of q) x (splits of the queue), so N=256 still fills 100+ SMs. Each
program streams its slice of the queue in BLOCK_K tiles and keeps, per row, a running max ``m``, a running sum
``l`` of exp(logit - m) and the running weighted key sum ``w = sum_j exp(logit_j - m) * queue_j`` (online
log-sum-exp). The (N, 1+K) logits never reach memory.
``_combine_kernel``: merges the splits' partials, folds in the positive logit q.k/T and writes the per-row loss,
the positive's probability p0 and the normalised weighted sum W = sum_j p_j queue_j. Backward needs only those:
dq = g/T * (W + (p0 - 1) k),  dk = g/T * (p0 - 1) q  (no second pass over the queue).
"""
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import INTERPRET


# _partial_kernel: one program = BLOCK_N rows of q x one split of the queue.
#   q_ptr (N, C), queue_ptr (K, C): inputs (any strides); m_ptr, l_ptr (S, N) and w_ptr (S, N, C): fp32 partials
#   per split; k_per_split: queue rows per split (a multiple of BLOCK_K); scale = 1 / temperature.
#   UPCAST: compute the dots in fp32 (the interpreter's bf16 dot is wrong); PRECISION: "ieee" or "tf32" for fp32.
#   1. load the q tile (BLOCK_N, BLOCK_C) once;
#   2. for each (BLOCK_K, BLOCK_C) key tile of the split: logits s = q @ tile^T * scale, masked past the split;
#   3. online log-sum-exp: new running max, rescale l and w by exp(m_old - m_new), add exp(s - m_new) and
#      exp(s - m_new) @ tile;
#   4. store this split's m, l, w.
@triton.jit
def _partial_kernel(
    q_ptr, queue_ptr, m_ptr, l_ptr, w_ptr,
    N, K, C, k_per_split, scale,
    stride_qn, stride_qc, stride_kk, stride_kc,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    tl.static_assert(BLOCK_N >= 16 and BLOCK_K >= 16 and BLOCK_C >= 16, "tl.dot needs tiles of at least 16")
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_C)
    row_ok = rows < N
    col_ok = cols < C
    q = tl.load(q_ptr + rows[:, None] * stride_qn + cols[None, :] * stride_qc,
                mask=row_ok[:, None] & col_ok[None, :], other=0.0)  # (BLOCK_N, BLOCK_C)
    if UPCAST:  # the interpreter's bf16 dot is wrong: compute in fp32 there
        q = q.to(tl.float32)
    k_start = pid_s * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    l = tl.zeros((BLOCK_N,), tl.float32)
    w = tl.zeros((BLOCK_N, BLOCK_C), tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        keys = k0 + tl.arange(0, BLOCK_K)
        key_ok = keys < k_end
        t = tl.load(queue_ptr + keys[:, None] * stride_kk + cols[None, :] * stride_kc,
                    mask=key_ok[:, None] & col_ok[None, :], other=0.0)  # (BLOCK_K, BLOCK_C)
        if UPCAST:
            t = t.to(tl.float32)
        s = tl.dot(q, tl.trans(t), input_precision=PRECISION) * scale  # (BLOCK_N, BLOCK_K) logits
        s = tl.where(key_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])  # (BLOCK_N, BLOCK_K)
        l = l * alpha + tl.sum(p, axis=1)
        w = w * alpha[:, None] + tl.dot(p.to(t.dtype), t, input_precision=PRECISION)  # (BLOCK_N, BLOCK_C)
        m = m_new
    part = pid_s * N + rows
    tl.store(m_ptr + part, m, mask=row_ok)
    tl.store(l_ptr + part, l, mask=row_ok)
    tl.store(w_ptr + part[:, None] * C + cols[None, :], w, mask=row_ok[:, None] & col_ok[None, :])


# _combine_kernel: one program = BLOCK_N rows.
#   q_ptr, k_ptr (N, C): queries and positive keys; m/l/w_ptr: the S splits' partials; loss_ptr, p0_ptr (N,) and
#   wout_ptr (N, C): fp32 outputs.
#   1. positive logit pos = q.k * scale starts the merge (m = pos, l = 1, w = 0);
#   2. fold in each split: m_new = max(m, m_s), l and w rescaled by exp(m - m_new) and exp(m_s - m_new);
#   3. lse = m + log(l); store loss = lse - pos, p0 = exp(pos - lse), W = w / l.
@triton.jit
def _combine_kernel(
    q_ptr, k_ptr, m_ptr, l_ptr, w_ptr, loss_ptr, p0_ptr, wout_ptr,
    N, C, S, scale,
    stride_qn, stride_qc, stride_pn, stride_pc,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    tl.static_assert(BLOCK_C >= 16, "BLOCK_C must cover the partial kernel's accumulator width (>= 16)")
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_C)
    row_ok = rows < N
    mask2 = row_ok[:, None] & (cols < C)[None, :]
    q = tl.load(q_ptr + rows[:, None] * stride_qn + cols[None, :] * stride_qc, mask=mask2, other=0.0)
    k = tl.load(k_ptr + rows[:, None] * stride_pn + cols[None, :] * stride_pc, mask=mask2, other=0.0)
    pos = tl.sum(q.to(tl.float32) * k.to(tl.float32), axis=1) * scale  # (BLOCK_N,) positive logits
    m = pos  # the positive starts the merge: l = exp(pos - m) = 1
    l = tl.full((BLOCK_N,), 1.0, tl.float32)
    w = tl.zeros((BLOCK_N, BLOCK_C), tl.float32)
    for s in range(0, S):
        part = s * N + rows
        ms = tl.load(m_ptr + part, mask=row_ok, other=float("-inf"))
        ls = tl.load(l_ptr + part, mask=row_ok, other=0.0)
        ws = tl.load(w_ptr + part[:, None] * C + cols[None, :], mask=mask2, other=0.0)
        m_new = tl.maximum(m, ms)
        a = tl.exp(m - m_new)
        b = tl.exp(ms - m_new)  # an empty split has ms = -inf: b = 0
        l = l * a + ls * b
        w = w * a[:, None] + ws * b[:, None]
        m = m_new
    lse = m + tl.log(l)
    tl.store(loss_ptr + rows, lse - pos, mask=row_ok)
    tl.store(p0_ptr + rows, tl.exp(pos - lse), mask=row_ok)
    tl.store(wout_ptr + rows[:, None] * C + cols[None, :], w / l[:, None], mask=mask2)


MAX_C = 256  # one (BLOCK_N, BLOCK_C) accumulator per program; wider embeddings take the chunked PyTorch path
BLOCK_K = 64  # the usual key tile (see launch_config for where it is smaller)
# Per-block shared memory limits (bytes): what a compiled kernel's ``metadata.shared`` must not exceed.
SHARED_LIMIT = {80: 166_912, 90: 232_448}  # A100; H100/H200


@dataclass(frozen=True)
class LaunchConfig:
    block_n: int
    block_k: int
    block_c: int
    num_warps: int
    num_stages: int


def launch_config(cc: int, dtype: torch.dtype, n: int, c: int) -> LaunchConfig:
    """The partial kernel's tiles for compute capability ``cc`` (e.g. 80, 90), input dtype and shape.

    Shared memory, measured by compiling for each target (metadata.shared, triton 3.8), is set by the key tile
    (BLOCK_K, BLOCK_C) and the q / accumulator tiles (BLOCK_N, BLOCK_C): at BLOCK_N=64, BLOCK_K=64, BLOCK_C=256 it
    is 196,608 B in fp32 (over the A100's 166,912 B: the kernel would not launch) and 98,304 / 65,536 B in bf16 on
    sm_80 / sm_90. So fp32 rows wider than 128 take BLOCK_K=32 below sm_90 (131,072 B). num_stages does not change
    it here (2, 3 and 4 measured equal). Warps: the fp32 accumulator of a 64 x 256 tile is 128 registers per thread
    at 4 warps, so BLOCK_C=256 takes 8 warps (64 each).
    """
    block_n = 16 if n <= 16 else (32 if n <= 32 else 64)
    block_c = max(16, triton.next_power_of_2(c))
    block_k = 32 if (cc < 90 and dtype == torch.float32 and block_c > 128) else BLOCK_K
    return LaunchConfig(block_n, block_k, block_c, num_warps=8 if block_c > 128 else 4, num_stages=3)


# triton.autotune over the key tile, warps and stages, for real GPUs (FASTMOCO_AUTOTUNE=1): the first call per
# shape benchmarks every candidate and keeps the fastest; a candidate whose shared memory exceeds the device's
# limit fails to launch and triton's autotuner skips it (tests/kernels/compile_targets.py compiles every candidate
# for sm_80 and sm_90). Off under the interpreter, which cannot time kernels. The table above is the default.
TUNE_BLOCK_K = (32, 64, 128)
TUNE_CONFIGS = [triton.Config({"BLOCK_K": bk}, num_warps=w, num_stages=st)
                for bk in TUNE_BLOCK_K for w in (4, 8) for st in (2, 3, 4)]
_partial_tuned = triton.autotune(configs=TUNE_CONFIGS, key=["N", "K", "C", "BLOCK_N", "BLOCK_C", "UPCAST",
                                                              "PRECISION"])(_partial_kernel)


def autotune_enabled() -> bool:
    return os.environ.get("FASTMOCO_AUTOTUNE", "0") == "1" and not INTERPRET


def split_queue(K: int, splits: int, tile: int) -> tuple[int, int]:
    """(rows per split, a multiple of ``tile``; number of splits) for about ``splits`` splits of K rows."""
    k_per_split = triton.cdiv(triton.cdiv(K, splits), tile) * tile
    return k_per_split, triton.cdiv(K, k_per_split)


def _capability(device) -> int:
    if INTERPRET or not torch.cuda.is_available():
        return 80  # the interpreter runs the smallest-memory row
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def _num_sms(device) -> int:
    if INTERPRET or not torch.cuda.is_available():
        return 2
    return torch.cuda.get_device_properties(device).multi_processor_count


def _partials(q, queue, temperature: float):
    """The partial kernel over ``queue``: per split, fp32 running max m (S, N), sum l (S, N) and weighted key sum
    w (S, N, C); with the launch's row blocks."""
    N, C = q.shape
    K = queue.shape[0]
    cfg = launch_config(_capability(q.device), q.dtype, N, C)
    block_n, block_c = cfg.block_n, cfg.block_c
    n_blocks = triton.cdiv(N, block_n)
    # split the queue so that about two programs run per SM
    splits = max(1, min(triton.cdiv(K, cfg.block_k), triton.cdiv(2 * _num_sms(q.device), n_blocks)))
    tuned = autotune_enabled()
    # every split a whole number of key tiles: of the largest candidate tile when the autotuner picks it
    k_per_split, splits = split_queue(K, splits, max(TUNE_BLOCK_K) if tuned else cfg.block_k)
    f32 = dict(device=q.device, dtype=torch.float32)
    m_part = torch.empty((splits, N), **f32)
    l_part = torch.empty((splits, N), **f32)
    w_part = torch.empty((splits, N, C), **f32)
    scale = 1.0 / temperature
    precision = "tf32" if (q.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32) else "ieee"
    table = {} if tuned else dict(BLOCK_K=cfg.block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    (_partial_tuned if tuned else _partial_kernel)[(n_blocks, splits)](
        q, queue, m_part, l_part, w_part, N, K, C, k_per_split, scale,
        q.stride(0), q.stride(1), queue.stride(0), queue.stride(1),
        BLOCK_N=block_n, BLOCK_C=block_c, UPCAST=INTERPRET and q.dtype == torch.bfloat16, PRECISION=precision,
        **table,
    )
    return m_part, l_part, w_part, cfg, n_blocks


def infonce_forward(q, k, queue, temperature: float):
    """Launch the fused forward. Returns fp32 (loss (N,), p0 (N,), W (N, C))."""
    N, C = q.shape
    m_part, l_part, w_part, cfg, n_blocks = _partials(q, queue, temperature)
    f32 = dict(device=q.device, dtype=torch.float32)
    loss = torch.empty((N,), **f32)
    p0 = torch.empty((N,), **f32)
    w = torch.empty((N, C), **f32)
    _combine_kernel[(n_blocks,)](
        q, k, m_part, l_part, w_part, loss, p0, w, N, C, m_part.shape[0], 1.0 / temperature,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        BLOCK_N=cfg.block_n, BLOCK_C=cfg.block_c,
    )
    return loss, p0, w


def inbatch_forward(q, keys, offset: int, temperature: float):
    """In-batch InfoNCE (row i's positive is keys[offset + i], every key a candidate): the same partial kernel
    over all the keys, then the splits merged here (S x N x C fp32, no N x M logits). Returns fp32 (loss (N,),
    W (N, C)) with W = sum_j p_j keys_j."""
    N = q.shape[0]
    m_part, l_part, w_part, _cfg, _blocks = _partials(q, keys, temperature)
    m = m_part.amax(0)  # (N,) an empty split holds -inf
    b = torch.exp(m_part - m)  # (S, N)
    l = (l_part * b).sum(0)  # (N,)
    w = (w_part * b[..., None]).sum(0) / l[:, None]  # (N, C)
    pos = (q.float() * keys[offset:offset + N].float()).sum(1) / temperature  # (N,)
    return m + torch.log(l) - pos, w
