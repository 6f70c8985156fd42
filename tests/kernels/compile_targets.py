"""Compile every Triton kernel, in every configuration its launcher can choose, for real GPU targets (no GPU
needed: triton bundles ptxas). Prints one JSON line per compiled kernel. Run with TRITON_INTERPRET=0 (under the
interpreter @triton.jit gives no compilable function); tests/kernels/test_gpu_targets.py does so.

``--quick``: only what a default training step launches (the InfoNCE tiles chosen at N=256, C=128 in fp32 and
bf16, one combine tile, the EMA in fp32 and bf16), for both targets: 10 compiles instead of 132."""
import itertools
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "run without the interpreter"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from fastmoco.kernels import ema as ema_k  # noqa: E402
from fastmoco.kernels import infonce as nce  # noqa: E402

PTR = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16"}
# shapes that reach every tile the launchers choose: N -> BLOCK_N 16/32/64, C -> BLOCK_C 16..MAX_C
NS, CS = (1, 20, 256, 4096), (1, 100, 128, 130, nce.MAX_C)


KERNELS = {"infonce_partial": nce._partial_kernel, "infonce_combine": nce._combine_kernel, "ema": ema_k._ema_kernel}


def _compile(job: dict) -> dict:
    """One compile; ``job`` names the kernel, its signature, constexprs, target and options (picklable)."""
    src = triton.compiler.ASTSource(fn=KERNELS[job["kernel"]], signature=job["signature"],
                                    constexprs=job["constexprs"])
    k = triton.compile(src, target=GPUTarget("cuda", job["cc"], 32), options=job["options"])
    ptx = k.asm["ptx"]
    return dict(job["report"], kernel=job["kernel"], cc=job["cc"], shared=k.metadata.shared,
                limit=nce.SHARED_LIMIT[job["cc"]], mma="mma." in ptx or "wgmma" in ptx, wgmma="wgmma" in ptx)


QUICK_DTYPES = (torch.float32, torch.bfloat16)  # CPU/fp32 and the CUDA default (bf16 autocast)


def partial_configs(quick: bool = False):
    seen = set()
    shapes = itertools.product(nce.SHARED_LIMIT, QUICK_DTYPES, (256,), (128,)) if quick else \
        itertools.product(nce.SHARED_LIMIT, PTR, NS, CS)
    for cc, dtype, n, c in shapes:
        cfg = nce.launch_config(cc, dtype, n, c)
        precisions = ("ieee", "tf32") if dtype == torch.float32 and not quick else ("ieee",)  # tf32 when allowed
        for precision in precisions:
            key = (cc, dtype, cfg, precision)
            if key not in seen:
                seen.add(key)
                yield key


def jobs(quick: bool = False):
    scalars = dict(N="i32", K="i32", C="i32", k_per_split="i32", scale="fp32", stride_qn="i32", stride_qc="i32",
                   stride_kk="i32", stride_kc="i32")
    for cc, dtype, cfg, precision in partial_configs(quick):
        sig = dict(q_ptr=PTR[dtype], queue_ptr=PTR[dtype], m_ptr="*fp32", l_ptr="*fp32", w_ptr="*fp32", **scalars,
                   BLOCK_N="constexpr", BLOCK_K="constexpr", BLOCK_C="constexpr", UPCAST="constexpr",
                   PRECISION="constexpr")
        yield dict(kernel="infonce_partial", cc=cc, signature=sig,
                   constexprs=dict(BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, BLOCK_C=cfg.block_c, UPCAST=False,
                                   PRECISION=precision),
                   options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
                   report=dict(dtype=str(dtype), precision=precision, tiles=[cfg.block_n, cfg.block_k, cfg.block_c],
                               warps=cfg.num_warps,
                               expect_mma=precision == "tf32" or dtype != torch.float32))  # ieee fp32: FMA units
    if quick:
        yield from _quick_rest()
        return
    # the autotuner's candidates at the widest tile (BLOCK_N 64, BLOCK_C MAX_C); num_stages leaves shared memory as
    # it is (measured), so one stage count stands for all three
    for cc, dtype, bk, warps in itertools.product(nce.SHARED_LIMIT, PTR, nce.TUNE_BLOCK_K, (4, 8)):
        sig = dict(q_ptr=PTR[dtype], queue_ptr=PTR[dtype], m_ptr="*fp32", l_ptr="*fp32", w_ptr="*fp32", **scalars,
                   BLOCK_N="constexpr", BLOCK_K="constexpr", BLOCK_C="constexpr", UPCAST="constexpr",
                   PRECISION="constexpr")
        yield dict(kernel="infonce_partial", cc=cc, signature=sig,
                   constexprs=dict(BLOCK_N=64, BLOCK_K=bk, BLOCK_C=nce.MAX_C, UPCAST=False, PRECISION="ieee"),
                   options=dict(num_warps=warps, num_stages=3),
                   report=dict(dtype=str(dtype), precision="ieee", tiles=[64, bk, nce.MAX_C], warps=warps, tuned=True,
                               expect_mma=dtype != torch.float32))
    yield from combine_jobs(itertools.product(nce.SHARED_LIMIT, PTR, (16, 32, 64), (16, 128, nce.MAX_C)))
    yield from ema_jobs(itertools.product(nce.SHARED_LIMIT, PTR))


def _quick_rest():
    yield from combine_jobs(itertools.product(nce.SHARED_LIMIT, (torch.float32,), (64,), (128,)))
    yield from ema_jobs(itertools.product(nce.SHARED_LIMIT, QUICK_DTYPES))


def combine_jobs(configs):
    combine_sig = dict(m_ptr="*fp32", l_ptr="*fp32", w_ptr="*fp32", loss_ptr="*fp32", p0_ptr="*fp32",
                       wout_ptr="*fp32", N="i32", C="i32", S="i32", scale="fp32", stride_qn="i32", stride_qc="i32",
                       stride_pn="i32", stride_pc="i32", BLOCK_N="constexpr", BLOCK_C="constexpr")
    for cc, dtype, block_n, block_c in configs:
        yield dict(kernel="infonce_combine", cc=cc, signature=dict(q_ptr=PTR[dtype], k_ptr=PTR[dtype], **combine_sig),
                   constexprs=dict(BLOCK_N=block_n, BLOCK_C=block_c), options={},
                   report=dict(dtype=str(dtype), tiles=[block_n, block_c], expect_mma=False))


def ema_jobs(configs):
    for cc, dtype in configs:
        sig = dict(dst_ptrs="*i64", src_ptrs="*i64", numels="*i64", blk_tensor="*i64", blk_offset="*i64",
                   weight="fp32", DTYPE="constexpr", BLOCK="constexpr", ITERS="constexpr")
        yield dict(kernel="ema", cc=cc, signature=sig,
                   constexprs=dict(DTYPE=ema_k._TL_DTYPE[dtype], BLOCK=ema_k.BLOCK, ITERS=ema_k.ITERS), options={},
                   report=dict(dtype=str(dtype), expect_mma=False))


def main():
    # ~2.5-4 s of ptxas per compile, 168 compiles (10 with --quick): one process per core
    with ProcessPoolExecutor(max_workers=os.cpu_count(), mp_context=multiprocessing.get_context("fork")) as pool:
        for row in pool.map(_compile, list(jobs("--quick" in sys.argv))):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
