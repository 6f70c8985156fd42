#!/usr/bin/env bash
# GPU check for an H100/H200 machine (torch 2.11, triton 3.6, nvcc, no internet, no DALI).
# Builds the package with the CUDA enqueue kernel, runs the CUDA tests and the op benchmarks, and writes
# everything to $OUT (default ./gpu_out). Budget: ~8 minutes on an H200 (build ~2.5 min, tests ~1 min,
# op benchmarks ~2 min, the autotuned InfoNCE ~0.5 min, the end-to-end ResNet-50 step ~2 min, the small step
# with and without CUDA graphs ~1.5 min; not yet timed on one). Run from the repository root:
#   bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 FASTMOCO_CUDA=1 FASTMOCO_REQUIRE_NATIVE=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  lscpu | grep -m1 'Model name'; nproc
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# no internet there: install only the package itself (torch, triton are present); wheels it lacks travel in .whl/,
# downloaded beforehand on a machine with internet by `bash scripts/gpu_wheels.sh` (pycocotools, for the detection
# test tests/evaluate/test_detect.py::test_fine_tunes_on_cuda)
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
python3 -c "import fastmoco.ops as o; print('native:', o.native_available())" | tee -a "$OUT/env.txt"

# CUDA tests (the CPU suite runs in CI); TRITON_INTERPRET must stay unset here so the real kernels run
# (-s: the reduce-overhead test prints which graphs inductor did not capture)
TRITON_INTERPRET=0 python3 -m pytest -q -s tests/ops tests/train tests/evaluate -k "cuda" -p no:cacheprovider 2>&1 | tee "$OUT/cuda_tests.txt"

# the op benchmarks, the in-batch InfoNCE (MoCo v3) at N=512/M=4096 and N=4096/M=32768 bf16 among them
python3 -m pytest -q benchmarks --benchmark-only --benchmark-columns=min,median,mean,rounds \
  --benchmark-sort=name --benchmark-json="$OUT/bench.json" -p no:cacheprovider 2>&1 | tee "$OUT/bench.txt"

# the fused InfoNCE again with triton.autotune choosing tiles, warps and stages (against the table's choice above)
FASTMOCO_AUTOTUNE=1 python3 -m pytest -q benchmarks/test_bench_infonce.py --benchmark-only \
  --benchmark-columns=min,median,mean,rounds --benchmark-sort=name --benchmark-json="$OUT/bench_autotune.json" \
  -p no:cacheprovider 2>&1 | tee "$OUT/bench_autotune.txt"

# end to end: ResNet-50, 224 px, batch 256, bf16, channels-last, compiled step, K=65536, on synthetic images (no
# dataset there); the compile time is printed separately from the steady-state pairs/s
python3 benchmarks/e2e.py --gpu-resnet50 --synthetic 4096 --steps 40 --warmup 5 --skip-official 2>&1 \
  | tee "$OUT/e2e_resnet50.txt"

# MoCo v3's ViT-S/16 at 224 px, bf16, compiled step, batch 128 on synthetic images: pairs/s (issue: ViTs)
python3 benchmarks/e2e.py --gpu-vit-small --synthetic 2048 --steps 30 --warmup 5 --skip-official 2>&1 \
  | tee "$OUT/e2e_vit_small_v3.txt"

# host overhead of the CUDA step: a small, host-bound step (the default ResNet-10 w16 at 36 px, batch 128,
# synthetic images) compiled without and with CUDA graphs (--compile-mode reduce-overhead); the difference in
# ms per step is the Python and launch time the graphs remove
for mode in default reduce-overhead; do
  python3 benchmarks/e2e.py --synthetic 4096 --steps 100 --warmup 10 --skip-official --compile \
    --compile-mode "$mode" 2>&1 | tee "$OUT/e2e_small_$mode.txt"
done
