"""Multi-tensor EMA: dst_i <- momentum * dst_i + (1 - momentum) * src_i for every pair, in place.

``fastmoco::ema_`` (schema in ``_library``) has a CPU kernel (``csrc/ema.cpp`` over ``at::_foreach_lerp_``; without
the extension ``torch._foreach_lerp_``) and a CUDA kernel, one Triton launch per dtype over dense pairs
(``kernels/ema.py``) with ``torch._foreach_lerp_`` for pairs whose memory is not dense. The per-parameter loop of
the original code is :func:`fastmoco.ops.reference.ema_reference_`.

The host cost is the point of the op, so its argument check is done once per call, and cheaply: the extension's
``ema_pairs_ok`` reads every pair's metadata in one C++ pass that builds no message; only when it says no does the
Python check (``_check_pairs``) run, to name the first problem, before anything is written. In eager mode
(nothing compiling, no torch-function or dispatch mode active) the public ``ema_`` calls the device's kernel
directly: the dispatcher's round trip through Python kernels costs ~36 us for 161 pairs, more than the update of
161 small tensors (measured, benchmarks/RESULTS.md section 1.5). Compiled code and modes go through the op.
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


CHECKS = {"python": 0}  # how often the Python pass of the check ran (tests count it: none in a training step)


def _check_pairs(dst, src, momentum) -> None:
    """Every check in Python, naming the first problem: the fake (compile-time) kernel runs it, the device
    kernels when the C++ pass says no (or without the extension)."""
    CHECKS["python"] += 1
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


def _checked(dst, src, momentum) -> None:
    """The one check of a kernel call: momentum, then the C++ pass, the Python one only where that says no."""
    _checks.number_in("momentum", momentum, 0.0, 1.0)
    if not (NATIVE and _native_ok(native.ema_pairs_ok, dst, src)):
        _check_pairs(dst, src, momentum)


def _native_ok(fn, *args) -> bool:
    try:
        return fn(*args)
    except TypeError:  # an element that is not a tensor: pybind refuses the list; the Python check names it
        return False


def _ema_cuda(dst: list[Tensor], src: list[Tensor], momentum: float) -> None:
    _checked(dst, src, momentum)
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
    _checks.number_in("momentum", momentum, 0.0, 1.0)
    if NATIVE and _native_ok(native.ema_cpu, dst, src, momentum):  # checked and written in one C++ call
        return
    _check_pairs(dst, src, momentum)  # names the problem (or, for a subclass, passes: then the foreach below)
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
        if isinstance(dst[0], Tensor):  # eager: the device's kernel directly (see the module's docstring)
            _library.call_in_place("ema_", dst[0].device, dst, src, momentum)
        else:
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
