#!/usr/bin/env bash
# Downloads, on a machine with internet, the wheels that benchmarks/gpu_check.sh installs on a GPU machine that has
# none: pycocotools for the CUDA detection test (the other packages it needs, torch, triton, timm, pytest,
# pytest-benchmark, matplotlib and numpy, come with common CUDA images). Target: CPython 3.12 on x86_64 Linux by
# default; PY_VERSION=3.11 (say) for another interpreter. Writes .whl/ in the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=${PY_VERSION:-3.12}
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$p")
done
# the version requirements.txt pins, so both machines score AP with the same evaluator
version=$(sed -n 's/^pycocotools==//p' requirements.txt)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  "${platforms[@]}" -d .whl "pycocotools==${version}"
ls -l .whl
