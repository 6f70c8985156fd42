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


@pytest.fixture(scope="module")
def compiled():
    env = dict(os.environ, TRITON_INTERPRET="0")
    res = subprocess.run([sys.executable, os.path.join(HERE, "compile_targets.py")], capture_output=True, text=True,
                         env=env, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads(line) for line in res.stdout.splitlines()]


def test_every_launch_configuration_compiles_for_both_targets(compiled):
    kinds = {(r["kernel"], r["cc"]) for r in compiled}
    assert kinds == {(k, cc) for k in ("infonce_partial", "infonce_combine", "ema") for cc in (80, 90)}
    partial = [r for r in compiled if r["kernel"] == "infonce_partial"]
    assert {tuple(r["tiles"]) for r in partial} >= {(16, 64, 16), (64, 64, 128), (64, 64, 256), (64, 32, 256)}


def test_shared_memory_fits_each_target(compiled):
    over = [r for r in compiled if r["shared"] > r["limit"]]
    assert not over, over


def test_dots_run_on_tensor_cores(compiled):
    for r in compiled:
        if r["expect_mma"]:
            assert r["mma"], r
            if r["cc"] >= 90 and r["tiles"][0] >= 64:  # Hopper's warpgroup MMA needs 64-row tiles; smaller: mma.sync
                assert r["wgmma"], r
