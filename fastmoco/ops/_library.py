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


_KERNELS: dict = {}  # name -> {"cpu": kernel, "cuda": kernel}, for call_in_place


def register(name: str, cpu, cuda, fake) -> None:
    """The op's CPU and CUDA kernels and its fake kernel, against its schema above."""
    torch.library.register_kernel(qualname(name), "cpu", cpu, lib=LIBRARY)
    torch.library.register_kernel(qualname(name), "cuda", cuda, lib=LIBRARY)
    torch.library.register_fake(qualname(name), fake, lib=LIBRARY)
    _KERNELS[name] = {"cpu": cpu, "cuda": cuda}


def _eager() -> bool:
    """Nothing is being traced or intercepted: no torch.compile, no torch-function or dispatch mode."""
    return not (torch.compiler.is_compiling() or torch._C._is_torch_function_mode_enabled()
                or torch._C._len_torch_dispatch_stack())


def call_in_place(name: str, device: torch.device, *args) -> None:
    """An in-place op without autograd (ema_, enqueue_): in eager mode its registered kernel for ``device``,
    called directly, else the op through the dispatcher. The round trip through the dispatcher into a Python
    kernel costs ~4 us for enqueue_ and ~36 us for ema_'s 161 pairs (measured, benchmarks/RESULTS.md 1.5): more
    than the work of a small call. The kernel runs the op's one argument check either way."""
    kernel = _KERNELS[name].get(device.type) if _eager() else None
    if kernel is not None:
        kernel(*args)
    else:
        getattr(torch.ops.fastmoco, name)(*args)
