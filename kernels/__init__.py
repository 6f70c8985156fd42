"""Triton kernels and their launchers (installed as ``fastmoco.kernels``).

Only this package imports triton; ``fastmoco.ops`` asks :func:`available` before launching anything. Under
``TRITON_INTERPRET=1`` (set before import) the kernels run on CPU tensors, which is how the tests exercise them.
"""
import os

try:  # triton is optional: CPU-only installs use the PyTorch paths in fastmoco.ops
    import triton  # noqa: F401

    HAVE_TRITON = True
except Exception:  # noqa: BLE001 - a broken triton install must not break `import fastmoco`
    HAVE_TRITON = False

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def available(device) -> bool:
    """True when the Triton kernels can run on tensors of this device."""
    if not HAVE_TRITON:
        return False
    return INTERPRET or str(device).startswith("cuda")
