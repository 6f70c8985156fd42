"""Every Triton kernel, in every configuration its launcher can choose, compiled for the A100 (sm_80) and the
H100/H200 (sm_90) without a GPU: it must fit the target's per-block shared memory, and a tl.dot meant for tensor
cores must compile to mma/wgmma. (A kernel can pass every interpreted test and still fail to launch on a GPU.)"""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")
HERE = os.path.dirname(os.path.abspath(__file__))


def _compile_targets(*flags):
    env = dict(os.environ, TRITON_INTERPRET="0")
    res = subprocess.run([sys.executable, os.path.join(HERE, "compile_targets.py"), *flags], capture_output=True,
                         text=True, env=env, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads(line) for line in res.stdout.splitlines()]


@pytest.fixture(scope="module")
def compiled():
    return _compile_targets()  # 168 compiles: ~4.5 min on the 2-core dev machine, hence the heavy set


def test_a_default_steps_kernels_compile_for_both_targets_and_fit():
    """The quick subset (every make test): what a default step launches, on both targets."""
    rows = _compile_targets("--quick")
    assert {(r["kernel"], r["cc"]) for r in rows} == {(k, cc) for k in ("infonce_partial", "infonce_combine", "ema")
                                                      for cc in (80, 90)}
    assert all(r["shared"] <= r["limit"] for r in rows), rows
    assert all(r["mma"] for r in rows if r["expect_mma"]), rows
    assert any(r["expect_mma"] for r in rows)  # the bf16 InfoNCE tile is among them


@pytest.mark.heavy
def test_every_launch_configuration_compiles_for_both_targets(compiled):
    kinds = {(r["kernel"], r["cc"]) for r in compiled}
    assert kinds == {(k, cc) for k in ("infonce_partial", "infonce_combine", "ema") for cc in (80, 90)}
    partial = [r for r in compiled if r["kernel"] == "infonce_partial" and not r.get("tuned")]
    assert {tuple(r["tiles"]) for r in partial} >= {(16, 64, 16), (64, 64, 128), (64, 64, 256), (64, 32, 256)}


@pytest.mark.heavy
def test_shared_memory_fits_each_target(compiled):
    over = [r for r in compiled if r["shared"] > r["limit"] and not r.get("tuned")]
    assert not over, over


@pytest.mark.heavy
def test_autotune_candidates_include_the_table_and_fit_somewhere(compiled):
    """With FASTMOCO_AUTOTUNE=1 the autotuner may pick any candidate; one that does not fit fails to launch and is
    skipped, so each target and dtype needs at least one that fits, and the table's own choice must be a
    candidate (the autotuner can always fall back to it)."""
    from fastmoco.kernels import infonce as nce

    tuned = [r for r in compiled if r.get("tuned")]
    for cc in nce.SHARED_LIMIT:
        for dtype in ("torch.float32", "torch.bfloat16", "torch.float16"):
            rows = [r for r in tuned if r["cc"] == cc and r["dtype"] == dtype]
            assert any(r["shared"] <= r["limit"] for r in rows), rows
    for cc, dtype in ((80, "float32"), (90, "bfloat16")):
        cfg = nce.launch_config(cc, getattr(__import__("torch"), dtype), 256, nce.MAX_C)
        assert cfg.block_k in nce.TUNE_BLOCK_K
        assert any(c.kwargs["BLOCK_K"] == cfg.block_k and c.num_warps == cfg.num_warps
                   and c.num_stages == cfg.num_stages for c in nce.TUNE_CONFIGS)


@pytest.mark.heavy
def test_dots_run_on_tensor_cores(compiled):
    for r in compiled:
        if r["expect_mma"]:
            assert r["mma"], r
            if r["cc"] >= 90 and r["tiles"][0] >= 64:  # Hopper's warpgroup MMA needs 64-row tiles; smaller: mma.sync
                assert r["wgmma"], r
