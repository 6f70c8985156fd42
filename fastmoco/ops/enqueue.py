"""Circular enqueue of keys into the negative queue: queue[(ptr + i) % K] = keys[i], ptr <- (ptr + N) % K.

``fastmoco::enqueue_`` is defined by the native extension (``csrc/``: C++ CPU kernel, CUDA kernel) when it is
built; otherwise the same op is registered here over the PyTorch reference, with one warning. Either way the
pointer stays on the device: no ``.item()`` and no host sync on CUDA.
"""
import warnings

import torch
from torch import Tensor

from . import _checks
from .reference import enqueue_reference_

try:
    import fastmoco._C  # noqa: F401  registers fastmoco::enqueue_ (CPU and, if compiled, CUDA)

    NATIVE = True
    NATIVE_ERROR = None
except (ImportError, OSError) as exc:
    NATIVE = False
    NATIVE_ERROR = f"{type(exc).__name__}: {exc}"

if NATIVE:
    @torch.library.register_fake("fastmoco::enqueue_")
    def _(queue, ptr, keys):
        return None
else:
    warnings.warn(f"fastmoco: native extension unavailable ({NATIVE_ERROR}); enqueue_ uses the PyTorch reference",
                  RuntimeWarning, stacklevel=2)

    @torch.library.custom_op("fastmoco::enqueue_", mutates_args=("queue", "ptr"))
    def _enqueue_op(queue: Tensor, ptr: Tensor, keys: Tensor) -> None:
        if ptr.device.type == "cpu":  # a value check on CUDA would need a host sync
            p = int(ptr[0])
            if not 0 <= p < queue.shape[0]:
                raise ValueError(f"enqueue_: ptr={p} outside [0, K={queue.shape[0]})")
        enqueue_reference_(queue, ptr, keys)

    @_enqueue_op.register_fake
    def _(queue, ptr, keys):
        return None


def native_available() -> bool:
    """True when ``fastmoco._C`` (the C++/CUDA enqueue) is loaded; False means the PyTorch reference runs."""
    return NATIVE


def enqueue_(queue: Tensor, ptr: Tensor, keys: Tensor) -> None:
    """Write ``keys`` (N, C) into ``queue`` (K, C) at ``ptr`` (int64, shape (1,)), wrapping; any N >= 1.

    N > K keeps the last K keys. A rejected call writes nothing. On CUDA an out-of-range ptr value is caught on
    the device (no sync): the kernel then writes nothing and leaves ptr as it was.
    """
    for name, x in (("queue", queue), ("ptr", ptr), ("keys", keys)):
        _checks.tensor(name, x)
    _checks.rank("queue", queue, 2, "(K, C)")
    _checks.rank("keys", keys, 2, "(N, C)")
    if ptr.dtype != torch.int64 or ptr.shape != (1,):
        raise TypeError(f"ptr must be an int64 tensor of shape (1,), got {ptr.dtype} of shape {tuple(ptr.shape)}")
    if keys.shape[1] != queue.shape[1]:
        raise ValueError(f"keys have C={keys.shape[1]} columns but the queue has C={queue.shape[1]}")
    if keys.shape[0] == 0 or queue.shape[0] == 0:
        raise ValueError(f"need N >= 1 keys and K >= 1 queue rows, got N={keys.shape[0]}, K={queue.shape[0]}")
    _checks.float_dtype("queue", queue)
    _checks.float_dtype("keys", keys)
    _checks.same("device", ("queue", "ptr", "keys"), (queue.device, ptr.device, keys.device))
    torch.ops.fastmoco.enqueue_(queue, ptr, keys.detach().to(queue.dtype))
