"""A supervised backbone for the transfer comparison: the same ResNet as a MoCo run, trained on Fashion-MNIST's labels
(cross-entropy through a linear layer) for a given wall time.

    python benchmarks/supervised_fmnist.py RUN_DIR OUT.pt [--seconds S]   # S default: RUN_DIR's training time

Recipe (the usual supervised baseline at this size): SGD, momentum 0.9, weight decay 5e-4, batch 256, lr 0.1 on a
cosine over the time budget (the lr follows elapsed time, so the run ends at lr 0 whenever the budget ends),
random crops of the 2-pixel-padded image and horizontal flips, inputs normalised with the MoCo run's mean and std.
Writes the backbone's state_dict (torchvision names, no ``fc``) and prints one JSON line: steps, epochs, seconds,
test top-1 of the linear layer it trained with.
"""
import argparse
import csv
import json
import math
import os
import time

import torch
import torch.nn.functional as F


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random 28 px crops of the 2-pixel-padded batch and random flips, per image."""
    n, _, h, w = x.shape
    padded = F.pad(x, (2, 2, 2, 2))
    dy, dx = torch.randint(0, 5, (2, n), generator=g)
    rows = (torch.arange(h)[None, :] + dy[:, None])[:, None, :, None].expand(n, x.shape[1], h, w + 4)
    out = padded.gather(2, rows)
    cols = (torch.arange(w)[None, :] + dx[:, None])[:, None, None, :].expand(n, x.shape[1], h, w)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=g) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def train_supervised(run_dir: str, out: str, seconds: float, seed: int = 0, classes: str | None = None) -> dict:
    """``classes``: the class subset to train on (comma-separated names or indices); default: the MoCo run's own
    (``--classes`` of its config), so both backbones saw the same images."""
    from fastmoco.data import load_fmnist
    from fastmoco.data.classes import keep_fmnist_classes
    from fastmoco.models import WideResNet
    from fastmoco.runs.checkpoint import save_atomic
    from fastmoco.runs.read import read_run

    _, cfg, meta = read_run(run_dir)
    torch.manual_seed(seed)
    net = WideResNet(cfg.arch, cfg.width, cfg.stem, meta["in_channels"]).to(memory_format=torch.channels_last)
    fc = torch.nn.Linear(net.feat_dim, 10)
    images, labels = load_fmnist(cfg.data, train=True)
    test_x, test_y = load_fmnist(cfg.data, train=False)
    spec = getattr(cfg, "classes", "") if classes is None else classes
    if spec:
        (images, labels), (test_x, test_y) = keep_fmnist_classes(spec, (images, labels), (test_x, test_y))
    mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"]).view(1, -1, 1, 1)
    norm = lambda x: (x.float() / 255 - mean) / std  # noqa: E731
    params = list(net.parameters()) + list(fc.parameters())
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    g = torch.Generator().manual_seed(seed)
    t0, steps, epoch = time.time(), 0, 0
    while time.time() - t0 < seconds:
        order = torch.randperm(len(images), generator=g)
        for idx in order.split(256):
            elapsed = time.time() - t0
            if elapsed >= seconds or len(idx) < 256:
                break
            for group in opt.param_groups:
                group["lr"] = 0.1 * 0.5 * (1 + math.cos(math.pi * elapsed / seconds))
            x = _augment(norm(images[idx]), g).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(fc(net(x)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        epoch += 1
    wall = time.time() - t0
    net.eval()
    with torch.no_grad():
        pred = torch.cat([fc(net(norm(test_x[i:i + 1000]))).argmax(1) for i in range(0, len(test_x), 1000)])
    top1 = 100.0 * (pred == test_y).float().mean().item()
    save_atomic({k: v.contiguous() for k, v in net.state_dict().items()}, out)
    return dict(steps=steps, epochs=round(steps * 256 / len(images), 2), seconds=round(wall, 1),
                test_top1=round(top1, 2), out=out)


def run_seconds(run_dir: str) -> float:
    """The training wall time a fastmoco run recorded (its metrics' last elapsed_s)."""
    with open(os.path.join(run_dir, "metrics.csv")) as fh:
        return float(list(csv.DictReader(fh))[-1]["elapsed_s"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("out")
    p.add_argument("--seconds", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", default=None, help="class subset (default: the MoCo run's --classes)")
    a = p.parse_args()
    print(json.dumps(train_supervised(a.run_dir, a.out, a.seconds or run_seconds(a.run_dir), a.seed, a.classes)),
          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
