"""Circular enqueue of keys into the negative queue: queue[(ptr + i) % K] = keys[i], ptr <- (ptr + N) % K.

``fastmoco::enqueue_`` (schema in ``_library``) has a CPU kernel (the C++ ring-buffer copy of ``fastmoco._C``) and
a CUDA kernel (``csrc/enqueue_cuda.cu``), each behind ``_check_args``; without the extension both run the PyTorch
reference. The pointer stays on the device: no ``.item()`` and no host sync on CUDA.
"""
import torch
from torch import Tensor

from . import _checks, _library
from ._native import NATIVE, NATIVE_CUDA, native, native_available  # noqa: F401
from .reference import enqueue_reference_


def _check_args(queue, ptr, keys) -> None:
    """Shape/dtype/device checks (the value of ptr is checked by the kernels, before any write)."""
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
    _checks.same("dtype", ("queue", "keys"), (queue.dtype, keys.dtype))
    _checks.same("device", ("queue", "ptr", "keys"), (queue.device, ptr.device, keys.device))


def _enqueue_cpu(queue, ptr, keys):
    _check_args(queue, ptr, keys)
    p = int(ptr[0])  # a host value already: no sync
    if not 0 <= p < queue.shape[0]:
        raise ValueError(f"enqueue_: ptr={p} outside [0, K={queue.shape[0]})")
    (native.enqueue_cpu if NATIVE else enqueue_reference_)(queue, ptr, keys)


def _enqueue_cuda(queue, ptr, keys):
    _check_args(queue, ptr, keys)  # metadata only: an out-of-range ptr value is caught on the device, no sync
    (native.enqueue_cuda if NATIVE_CUDA else enqueue_reference_)(queue, ptr, keys)


_library.register("enqueue_", cpu=_enqueue_cpu, cuda=_enqueue_cuda, fake=_check_args)


def enqueue_(queue: Tensor, ptr: Tensor, keys: Tensor) -> None:
    """Write ``keys`` (N, C) into ``queue`` (K, C) at ``ptr`` (int64, shape (1,)), wrapping; any N >= 1.

    N > K keeps the last K keys. A rejected call writes nothing. On CUDA an out-of-range ptr value is caught on
    the device (no sync): the kernel then writes nothing and leaves ptr as it was.
    """
    if isinstance(keys, Tensor) and isinstance(queue, Tensor) and keys.is_floating_point():
        keys = keys.detach().to(queue.dtype)  # e.g. bf16 keys from autocast into an fp32 queue
    if isinstance(queue, Tensor):  # eager: the device's kernel directly (_library.call_in_place)
        _library.call_in_place("enqueue_", queue.device, queue, ptr, keys)
    else:
        torch.ops.fastmoco.enqueue_(queue, ptr, keys)
