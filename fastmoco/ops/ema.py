"""Multi-tensor EMA: dst_i <- momentum * dst_i + (1 - momentum) * src_i for every pair, in place.

``fastmoco::ema_`` (schema in ``_library``) has a CPU kernel (``csrc/ema.cpp`` over ``at::_foreach_lerp_``; without
the extension ``torch._foreach_lerp_``) and a CUDA kernel, one Triton launch per dtype over dense pairs
(``kernels/ema.py``) with ``torch._foreach_lerp_`` for pairs whose memory is not dense; every kernel runs
``_check_pairs`` before any write. The per-parameter loop of the original code is
:func:`fastmoco.ops.reference.ema_reference_`.
"""
from typing import Iterable

import torch
from torch import Tensor

from . import _checks, _library
from ._native import NATIVE, native
from .reference import ema_reference_  # noqa: F401

try:
    from fastmoco import kernels as _kernels
except ImportError:
    _kernels = None


def _check_pairs(dst, src, momentum) -> None:
    """Every check, before any write: the CPU and CUDA kernels and the fake (compile-time) kernel run it."""
    if len(dst) != len(src):
        raise ValueError(f"ema_: dst has {len(dst)} tensors but src has {len(src)}")
    _checks.number_in("momentum", momentum, 0.0, 1.0)
    for i, (d, s) in enumerate(zip(dst, src)):
        _checks.tensor(f"dst[{i}]", d)
        _checks.tensor(f"src[{i}]", s)
        if d.shape != s.shape:
            raise ValueError(f"ema_: shape mismatch at index {i}: dst {tuple(d.shape)} vs src {tuple(s.shape)}")
        _checks.float_dtype(f"dst[{i}]", d)
        _checks.same("dtype", (f"dst[{i}]", f"src[{i}]"), (d.dtype, s.dtype))
        _checks.same("device", (f"dst[{i}]", f"src[{i}]"), (d.device, s.device))


def _dense_pair(d: Tensor, s: Tensor) -> bool:
    """Both tensors cover one contiguous block of memory with the same element order."""
    return d.stride() == s.stride() and (d.is_contiguous() or d.is_contiguous(memory_format=torch.channels_last))


def _ema_cuda(dst: list[Tensor], src: list[Tensor], momentum: float) -> None:
    _check_pairs(dst, src, momentum)
    if _kernels is not None and _kernels.available(dst[0].device):
        from fastmoco.kernels.ema import ema_ as ema_triton_

        dense = [_dense_pair(d, s) for d, s in zip(dst, src)]
        ema_triton_([d for d, ok in zip(dst, dense) if ok], [s for s, ok in zip(src, dense) if ok], momentum)
        rest = [(d, s) for d, s, ok in zip(dst, src, dense) if not ok]
        if rest:
            torch._foreach_lerp_([d for d, _ in rest], [s for _, s in rest], 1.0 - momentum)
    else:
        torch._foreach_lerp_(dst, src, 1.0 - momentum)


def _ema_cpu(dst: list[Tensor], src: list[Tensor], momentum: float) -> None:
    _check_pairs(dst, src, momentum)
    if NATIVE:
        native.ema_cpu(dst, src, momentum)
    else:
        torch._foreach_lerp_(dst, src, 1.0 - momentum)


_library.register("ema_", cpu=_ema_cpu, cuda=_ema_cuda, fake=_check_pairs)


def ema_(dst: Iterable[Tensor], src: Iterable[Tensor], momentum: float) -> None:
    """In place over equal-length sequences of same-shape tensors (e.g. key and query encoder parameters).

    A rejected call (length, shape, dtype or device mismatch, momentum outside [0, 1]) writes nothing.
    """
    dst, src = list(dst), list(src)
    if not dst and not src:
        return
    with torch.no_grad():
        torch.ops.fastmoco.ema_(dst, src, momentum)


def ema_pairs(target: torch.nn.Module, source: torch.nn.Module, include_buffers: bool = False):
    """(dst, src) lists for an EMA of ``source`` into ``target``: parameters, plus float buffers (BN running
    statistics) when asked; integer buffers such as num_batches_tracked are left alone."""
    dst, src = list(target.parameters()), list(source.parameters())
    if include_buffers:
        for bd, bs in zip(target.buffers(), source.buffers()):
            if bd.is_floating_point():
                dst.append(bd)
                src.append(bs)
    return dst, src


class EMA(torch.nn.Module):
    """Keeps ``target``'s parameters (and optionally float buffers) an EMA of ``source``'s: ``EMA(key, query)(m)``."""

    def __init__(self, target: torch.nn.Module, source: torch.nn.Module, include_buffers: bool = False):
        super().__init__()
        self.target, self.source, self.include_buffers = [target], [source], include_buffers  # lists: not submodules

    def forward(self, momentum: float) -> None:
        ema_(*ema_pairs(self.target[0], self.source[0], self.include_buffers), momentum)
