"""ema_ vs torch._foreach_lerp_ on ResNet-50's parameters, timed alternately in one process, the order swapped
every round (A B, B A, ...): the machine's drifting memory bandwidth and the position in the pair (measured:
the call after the other runs ~2 % faster, whichever it is) affect both alike; prints the medians and their ratio.

    python benchmarks/ema_interleaved.py [--rounds 60] [--threads 2]
"""
import argparse
import statistics
import time

import torch
import torchvision

from fastmoco import ops


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    q = [p.detach() for p in torchvision.models.resnet50().parameters()]  # 161 tensors, 25.6 M fp32
    k = [p.clone() + 0.01 for p in q]
    impls = {"fused ema_": lambda: ops.ema_(k, q, 0.999),
             "torch._foreach_lerp_": lambda: torch._foreach_lerp_(k, q, 0.001)}
    times = {name: [] for name in impls}
    for fn in impls.values():
        fn()
    for r in range(args.rounds):
        for name, fn in (list(impls.items()) if r % 2 == 0 else list(impls.items())[::-1]):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    for name, m in med.items():
        print(f"{name:22s} median {m:.3f} ms  min {min(times[name]) * 1e3:.3f} ms")
    print(f"fused / foreach time: {med['fused ema_'] / med['torch._foreach_lerp_']:.3f}")


if __name__ == "__main__":
    main()
