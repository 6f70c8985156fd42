"""Loads the native extension ``fastmoco._C`` once: it defines ``fastmoco::enqueue_`` and ``fastmoco::ema_``
(schemas, C++ CPU kernels, the CUDA enqueue kernel). Without it the ops are defined in Python over the PyTorch
reference, after one warning."""
import warnings

try:
    import fastmoco._C  # noqa: F401

    NATIVE, NATIVE_ERROR = True, None
except (ImportError, OSError) as exc:
    NATIVE, NATIVE_ERROR = False, f"{type(exc).__name__}: {exc}"
    warnings.warn(f"fastmoco: native extension unavailable ({NATIVE_ERROR}); enqueue_ and the CPU ema_ use the "
                  "PyTorch reference", RuntimeWarning, stacklevel=2)


def native_available() -> bool:
    """True when ``fastmoco._C`` (C++ enqueue/EMA, CUDA enqueue) is loaded; False means the PyTorch reference runs."""
    return NATIVE
