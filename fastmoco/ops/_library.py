"""The fastmoco operator library: every op's schema, declared once, here.

Each op's module then registers its kernels against these schemas, one per dispatch key (``cpu``, ``cuda``), and
a fake kernel for tracing (torch.compile, torch.export); every kernel, fake included, starts with the op's one
argument check from ``_checks``. The native extension ``fastmoco._C`` holds compute functions only (C++ CPU
kernels, the CUDA enqueue kernel), called from those registered kernels; it declares no schema of its own.
"""
import torch

SCHEMAS = {
    # per-row loss, p0 and W (see infonce.py); the two last are saved for the backward
    "infonce": "(Tensor q, Tensor k, Tensor queue, float temperature) -> (Tensor, Tensor, Tensor)",
    # in-batch keys (MoCo v3): per-row loss and W (see infonce_inbatch.py), W saved for the backward
    "infonce_inbatch": "(Tensor q, Tensor keys, int offset, float temperature) -> (Tensor, Tensor)",
    "ema_": "(Tensor(a!)[] dst, Tensor[] src, float momentum) -> ()",
    "enqueue_": "(Tensor(a!) queue, Tensor(b!) ptr, Tensor keys) -> ()",
}

LIBRARY = torch.library.Library("fastmoco", "DEF")  # kept alive for the process: it owns the definitions
for _name, _schema in SCHEMAS.items():
    LIBRARY.define(_name + _schema)


def qualname(name: str) -> str:
    return f"fastmoco::{name}"


def register(name: str, cpu, cuda, fake) -> None:
    """The op's CPU and CUDA kernels and its fake kernel, against its schema above."""
    torch.library.register_kernel(qualname(name), "cpu", cpu, lib=LIBRARY)
    torch.library.register_kernel(qualname(name), "cuda", cuda, lib=LIBRARY)
    torch.library.register_fake(qualname(name), fake, lib=LIBRARY)
