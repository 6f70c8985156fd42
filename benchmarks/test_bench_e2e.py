"""End-to-end training throughput, side by side in one run: fastmoco's train step (default config of this device)
against the official-style loop (per-sample transforms in a 2-worker DataLoader, reference ops, int(ptr) enqueue)
on the same model and batch. ``python benchmarks/e2e.py`` prints the same comparison with a per-phase table."""
import os

import pytest

from conftest import device_under_test
from e2e import SYNTHETIC, Phases, config, fastmoco_runner, official_config, phase_runner
from fastmoco.runs.config import FMNIST_DIR

DEV = device_under_test()
if DEV.type == "cuda":  # ResNet-50 at 224 px on random images: no dataset needed on a GPU machine
    SYNTHETIC.update(n=2048, side=256)
STEPS = 10  # steps per round: ~2.5 s (fastmoco) and ~7 s (official-style) on the 2-core CPU
FMNIST = FMNIST_DIR


class _Args:
    gpu_resnet50 = DEV.type == "cuda"
    arch = width = stem = image_size = batch_size = K = compile = None
    subset = 8192  # enough images for every round without an epoch boundary inside the timed steps


@pytest.mark.skipif(not os.path.isdir(FMNIST) and not SYNTHETIC, reason="apt-get install dataset-fashion-mnist")
@pytest.mark.parametrize("path", ["fastmoco train step", "official-style loop"])
def test_e2e_pairs_per_s(benchmark, path):
    cfg = config(_Args, DEV)
    if path == "fastmoco train step":
        run = fastmoco_runner(cfg, DEV)
        fn = lambda: run(STEPS)  # noqa: E731
    else:
        run_ph = phase_runner(official_config(cfg), DEV, official=True)
        fn = lambda: run_ph(STEPS, Phases(DEV))  # noqa: E731
    fn()  # warm-up: compile, DataLoader workers
    benchmark.group = f"e2e MoCo step, {cfg.arch} w{cfg.width} batch {cfg.batch_size} K {cfg.K}, {DEV.type}"
    benchmark.pedantic(fn, rounds=3, iterations=1)
    benchmark.extra_info["pairs_per_s(min)"] = round(STEPS * cfg.batch_size / benchmark.stats.stats.min, 1)
