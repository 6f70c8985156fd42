#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine with Python 3.11 (idempotent; a no-op when nothing changed):
#   Fashion-MNIST (Debian package), torch + torchvision + the tools, and fastmoco itself (editable, with the C++
#   extension; FASTMOCO_CUDA=1 also compiles the CUDA kernel, which needs nvcc).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

stamp=.setup-stamp
want="$( (cat setup.py pyproject.toml csrc/* requirements.txt; echo "cuda=${FASTMOCO_CUDA:-0}") | sha256sum | cut -d' ' -f1)"
# "already set up": the stamp matches the build inputs and the package imports with its extension from this
# checkout (torch first: fastmoco._C links against torch's libraries, which only importing torch puts in reach;
# an editable install of another clone would import too, from there)
set_up() {
  local here="$PWD/fastmoco"
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && (cd / && $PY -c "
import os, sys, torch, fastmoco._C
sys.exit(not os.path.samefile(os.path.dirname(fastmoco._C.__file__), sys.argv[1]))" "$here") 2>/dev/null
}
if [ "${1:-}" = "--check" ]; then  # exit 0 when nothing would be installed (tests/test_setup.py runs this)
  set_up
  exit
fi
if set_up; then
  exit 0
fi
$PY -m pip install -q -r requirements.txt
$PY -m pip install -q --no-build-isolation -e .
$PY -c "import fastmoco.ops as o; print('fastmoco installed; native ops:', o.native_available())"
echo "$want" > "$stamp"
