"""End-to-end training throughput: fastmoco's default path against an official-style MoCo loop, same model, batch
and machine, side by side in one run, with a per-phase breakdown of both.

    python benchmarks/e2e.py                       # the default Fashion-MNIST config on this machine
    python benchmarks/e2e.py --gpu-resnet50        # ResNet-50, 224 px, batch 256, bf16, channels-last (CUDA)

Rows:
- ``fastmoco (train step)``: the product's step (``MocoStep``) over the product's data path, no phase syncs:
  the headline pairs/s.
- ``fastmoco (phases)``: the same pieces called one at a time, the device synchronised at each boundary.
- ``official-style (phases)``: per-sample torchvision transforms in a DataLoader with 2 workers, the reference
  ops (einsum + cat + cross-entropy, per-parameter EMA loop) and the original ``int(ptr)`` slice enqueue, eager.
"""
import argparse
import contextlib
import itertools
import os
import sys
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from naive import naive_enqueue  # noqa: E402

from fastmoco.data import TensorData, build_data  # noqa: E402
from fastmoco.data.transforms import view_transform  # noqa: E402
from fastmoco.models import build_method  # noqa: E402
from fastmoco.train import TrainConfig  # noqa: E402
from fastmoco.runs.distributed import ProcessGroup  # noqa: E402
from fastmoco.train.optim import build_optimizer  # noqa: E402
from fastmoco.train.step import MocoStep  # noqa: E402

PHASES = ["data wait", "query fwd+bwd", "key fwd", "loss", "optimizer", "EMA", "enqueue"]


class Phases:
    """Wall time per named phase; the device is synchronised at each boundary so times add up."""

    def __init__(self, device):
        self.device, self.seconds = device, defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[name] += time.perf_counter() - t0


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(model, optimizer, batches, steps, ph, enqueue, channels_last=False, amp_dtype=None):
    """MoCo steps, one phase at a time (the order of the product's step)."""
    for _ in range(steps):
        with ph("data wait"):
            v1, v2 = next(batches)
            if channels_last:
                v1, v2 = (v.contiguous(memory_format=torch.channels_last) for v in (v1, v2))
        with torch.autocast(v1.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            with ph("query fwd+bwd"):
                q = F.normalize(model.encoder_q(v1), dim=1)  # (N, dim)
            with ph("key fwd"):
                k = model.keys(v2)  # (N, dim)
            with ph("loss"):
                loss = model.loss(q, k)
        with ph("query fwd+bwd"):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with ph("optimizer"):
            optimizer.step()
        with ph("EMA"):
            model.momentum_update()
        with ph("enqueue"):
            enqueue(model.queue, model.ptr, k.detach().to(model.queue.dtype))


class _PerSample(torch.utils.data.Dataset):
    """In-memory uint8 images through a per-sample transforms.v2 pipeline, twice (the original code's way)."""

    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.transform(self.images[i])


def _forever(make_epoch):
    for epoch in itertools.count():
        yield from make_epoch(epoch)


SYNTHETIC = {}  # images per run when the data is synthetic (set by --synthetic)


def _data(cfg, device):
    if not SYNTHETIC:
        return build_data(cfg, device)
    n, side = SYNTHETIC["n"], SYNTHETIC["side"]
    images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(n, dtype=torch.long)
    return TensorData(cfg, device, images, labels, images[:1], labels[:1])


def _build(cfg, device, ops_impl):
    torch.manual_seed(0)
    data = _data(cfg, device)
    model = build_method(cfg, data.in_channels).to(device)
    model.ops_impl = ops_impl
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg, model.query_network().parameters(), cfg.lr_for(1))
    return data, model, opt


def fastmoco_runner(cfg, device):
    """``run(steps)``: the product's step (MocoStep) over the product's data path, no phase syncs."""
    data, model, opt = _build(cfg, device, cfg.ops)
    step = MocoStep(model, opt, cfg, ProcessGroup(device=device))
    batches = _forever(data.epoch)

    def run(steps):
        for _ in range(steps):
            loss = step([next(batches) for _ in range(cfg.accum_steps)], cfg.m)
        loss.item()  # one host sync at the end

    return run


def phase_runner(cfg, device, official: bool):
    """``run(steps, phases)``: the step's pieces one at a time; official=True is the original code's way."""
    data, model, opt = _build(cfg, device, "reference" if official else "fused")
    if official:
        view = view_transform(cfg.aug, data.image_size, data.in_channels, data.mean, data.std, cfg.crop_min_scale)
        loader = lambda epoch: torch.utils.data.DataLoader(  # noqa: E731
            _PerSample(data.images, view), batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=2,
            pin_memory=device.type == "cuda", persistent_workers=False)
        batches = ((a.to(device, non_blocking=True), b.to(device, non_blocking=True))
                   for a, b in _forever(loader))
        enqueue = naive_enqueue
    else:
        batches, enqueue = _forever(data.epoch), lambda q, p, k: model.enqueue(k)
    amp = torch.bfloat16 if cfg.amp else None
    return lambda steps, ph: timed_steps(model, opt, batches, steps, ph, enqueue, cfg.channels_last, amp)


def official_config(cfg) -> TrainConfig:
    """The same model, batch and device, run the original code's way: eager."""
    return TrainConfig(**{**cfg.to_dict(), "compile": False, "ops": "reference"})


def measure(cfg, device, steps, warmup, skip_official=False):
    """[(row name, pairs/s, ms per phase or None)] and the train step's warm-up seconds."""
    run = fastmoco_runner(cfg, device)
    t0 = time.perf_counter()
    run(warmup)
    t_warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    run(steps)
    rows = [("fastmoco (train step)", steps * cfg.global_batch(1) / (time.perf_counter() - t0), None)]
    # the phase breakdown and the official-style loop are MoCo v1/v2's (queue, enqueue): v3 runs the step only
    rows_wanted = 0 if cfg.method == "v3" else 1 if skip_official else 2
    for name, c, official in (("fastmoco (phases)", cfg, False), ("official-style (phases)", official_config(cfg),
                                                                   True))[:rows_wanted]:
        run_ph = phase_runner(c, device, official)
        run_ph(warmup, Phases(device))
        ph = Phases(device)
        t0 = time.perf_counter()
        run_ph(steps, ph)
        rows.append((name, steps * c.batch_size / (time.perf_counter() - t0),
                     {k: 1000 * v / steps for k, v in ph.seconds.items()}))
    return rows, t_warm


def config(args, device) -> TrainConfig:
    kw = dict(device=device.type, progress=False)
    if args.gpu_resnet50:
        kw.update(arch="resnet50", width=64, stem="imagenet", image_size=224, batch_size=256, K=65536, amp=True,
                  channels_last=True, compile=True, preset="v2")
    if args.gpu_vit_small:  # MoCo v3's ViT-S/16 recipe (AdamW, frozen patch projection), bf16, compiled
        kw.update(method="v3", arch="vit_small", image_size=224, batch_size=128, amp=True, channels_last=True,
                  compile=True)
    for name in ("method", "arch", "width", "stem", "image_size", "batch_size", "K", "compile", "subset",
                 "compile_mode"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    return TrainConfig(**kw).resolved().for_runtime(device.type, 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compiles, worker start-up)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--gpu-resnet50", action="store_true", help="ResNet-50 224 px bf16 batch 256 K=65536 (CUDA)")
    p.add_argument("--gpu-vit-small", action="store_true", help="MoCo v3 ViT-S/16 224 px bf16 batch 128 (CUDA)")
    for name, typ in (("method", str), ("arch", str), ("width", int), ("stem", str), ("image_size", int), ("batch_size", int),
                      ("K", int), ("subset", int)):
        p.add_argument("--" + name.replace("_", "-"), type=typ)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--compile-mode", choices=["default", "max-autotune", "reduce-overhead"], default=None,
                   help="reduce-overhead: CUDA graphs (the step's host time is what it removes)")
    p.add_argument("--skip-official", action="store_true")
    p.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="N random 3-channel uint8 images (256 px, 1.2x the crop for --gpu-resnet50) instead of a dataset")
    args = p.parse_args(argv)
    if args.synthetic:
        SYNTHETIC.update(n=args.synthetic, side=256 if args.gpu_resnet50 or args.gpu_vit_small else 32)
    device = torch.device(args.device)
    cfg = config(args, device)
    print(f"method {cfg.method}, model {cfg.arch} width {cfg.width} stem {cfg.stem}, {cfg.image_size or 'native'} px, batch "
          f"{cfg.batch_size}, K {cfg.K}, amp {cfg.amp}, channels_last {cfg.channels_last}, compile {cfg.compile} "
          f"({cfg.compile_mode}), "
          f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    rows, t_warm = measure(cfg, device, args.steps, args.warmup, args.skip_official)
    print(f"warm-up of the train step ({args.warmup} steps{', compile included' if cfg.compile else ''}): "
          f"{t_warm:.1f} s")
    print(f"{'path':26s} {'pairs/s':>9s} " + " ".join(f"{name:>13s}" for name in PHASES) + "   (ms per step)")
    for name, rate, ms in rows:
        cells = " ".join(f"{ms.get(k, 0.0):13.1f}" for k in PHASES) if ms else " ".join(f"{'':13s}" for _ in PHASES)
        print(f"{name:26s} {rate:9.1f} {cells}")
    if not args.skip_official:
        print(f"speed-up of fastmoco's train step over the official-style loop: {rows[0][1] / rows[-1][1]:.2f}x")
    return rows


if __name__ == "__main__":
    main()
