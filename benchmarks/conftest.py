"""Benchmarks: fused ops vs the naive (original-code-style) path, side by side in one pytest-benchmark run.

Run: pytest benchmarks/ --benchmark-only --benchmark-columns=min,median,mean,rounds
Peak memory (extra bytes allocated during the call, inputs excluded) goes into each row's extra_info and is
printed at the end of the session.
"""
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
    # CPU: replay the profiler's allocation/free records in time order and take the running maximum
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = sorted((e.time_range.start, e.cpu_memory_usage) for e in prof.events() if e.name == "[memory]")
    peak = cur = 0
    for _, delta in records:
        cur += delta
        peak = max(peak, cur)
    return peak


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
