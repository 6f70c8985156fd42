"""Test set-up: Triton kernels run under the interpreter on CPU tensors (must be set before triton is imported)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"

# (dtype, atol, rtol) against a float64 reference. Low-precision rows are loose because the *inputs* are rounded
# (the reference sees the rounded values too, so what is left is fp32-accumulated arithmetic on bf16/fp16 outputs).
DTYPE_TOLS = [
    (torch.float64, 1e-10, 1e-10),
    (torch.float32, 2e-5, 2e-5),
    (torch.float16, 5e-3, 5e-3),
    (torch.bfloat16, 3e-2, 3e-2),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def needs_fmnist():
    return pytest.mark.skipif(not os.path.isdir(FMNIST_DIR), reason="apt-get install dataset-fashion-mnist")


cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
