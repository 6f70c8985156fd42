"""Benchmarks: fused ops vs the naive (original-code-style) path, side by side in one pytest-benchmark run.

Run: pytest benchmarks/ --benchmark-only --benchmark-columns=min,median,mean,rounds
Peak memory (extra bytes the call needs above what was allocated before it: CUDA allocator peak on GPU, resident
high-water mark on CPU) goes into each row's extra_info and is printed at the end of the session.
"""
import ctypes
import gc

import pytest
import torch

_memory_rows = []


def peak_extra_bytes(fn, device) -> int:
    """Peak of bytes allocated while fn() runs, above what was allocated before it (CPU or CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    # CPU: the process's resident-set high-water mark. malloc_trim returns freed heap pages to the OS and
    # writing 5 to /proc/self/clear_refs resets the mark (Linux), so the peak above the start is what fn adds.
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - base) * 1024


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


@pytest.fixture
def record_memory(request):
    def record(benchmark, fn, device):
        peak = peak_extra_bytes(fn, device)
        benchmark.extra_info["peak_extra_MiB"] = round(peak / 2**20, 2)
        _memory_rows.append((request.node.name, peak / 2**20))
        return peak

    return record


def pytest_terminal_summary(terminalreporter):
    if _memory_rows:
        terminalreporter.write_sep("-", "peak extra memory (MiB)")
        for name, mib in _memory_rows:
            terminalreporter.write_line(f"{name:70s} {mib:10.2f}")


def device_under_test() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
