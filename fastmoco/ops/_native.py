"""The native extension ``fastmoco._C``, loaded once: compute functions (C++ CPU enqueue and EMA, the CUDA enqueue
kernel) that the ops' registered kernels call. Without it those kernels use the PyTorch reference, after one
warning."""
import warnings

try:
    from fastmoco import _C as native

    NATIVE_ERROR = None
except (ImportError, OSError) as exc:
    native, NATIVE_ERROR = None, f"{type(exc).__name__}: {exc}"
    warnings.warn(f"fastmoco: native extension unavailable ({NATIVE_ERROR}); enqueue_ and the CPU ema_ use the "
                  "PyTorch reference", RuntimeWarning, stacklevel=2)

NATIVE = native is not None
NATIVE_CUDA = NATIVE and hasattr(native, "enqueue_cuda")


def native_available() -> bool:
    """True when ``fastmoco._C`` (C++ enqueue/EMA, CUDA enqueue) is loaded; False means the PyTorch reference runs."""
    return NATIVE
