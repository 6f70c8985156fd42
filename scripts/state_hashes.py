"""Hashes of the trained state after 6 steps, one per training path: the proof that a refactor changed nothing.

Each case trains a tiny model on the embedded Fashion-MNIST through the CLI (a subprocess, as a user runs it),
then hashes every tensor of ``last.pt``'s model (sorted by name). Run it before and after a change and compare:

    python scripts/state_hashes.py --save /tmp/before.json
    ...change...
    python scripts/state_hashes.py --compare /tmp/before.json     # exit 1 when any hash differs
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

from fastmoco.runs.checkpoint import safe_load

TINY = ["--subset", "512", "--batch-size", "32", "--width", "4", "--epochs", "2", "--max-steps", "6", "--threads",
        "2", "--no-progress", "--seed", "0"]
CASES = {
    "default": ["--K", "128"],
    "symmetric": ["--K", "128", "--symmetric"],
    "accum-steps-2": ["--K", "128", "--accum-steps", "2", "--batch-size", "16"],
    "small-crops-2": ["--K", "128", "--small-crops", "2"],
    "v3-resnet": ["--method", "v3", "--mlp-dim", "64"],
    "v3-vit_fmnist": ["--method", "v3", "--arch", "vit_fmnist", "--mlp-dim", "64"],
}


def state_hash(run_dir: str) -> str:
    model = safe_load(os.path.join(run_dir, "last.pt"))["model"]  # weights_only, with fastmoco's allow-list
    h = hashlib.sha256()
    for k in sorted(model):
        h.update(k.encode())
        h.update(model[k].contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _train(out: str, args: list, world: int = 1) -> None:
    if world == 1:
        cmd = [sys.executable, "-m", "fastmoco.train"]
    else:  # torchrun on gloo (CPU): the same CLI in `world` processes
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
               "-m", "fastmoco.train"]
    done = subprocess.run(cmd + TINY + args + ["--out", out], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")


def hashes() -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in CASES.items():
            _train(os.path.join(tmp, name), args)
            out[name] = state_hash(os.path.join(tmp, name))
            print(f"{name}: {out[name]}", flush=True)
        _train(os.path.join(tmp, "gloo"), ["--K", "128", "--batch-size", "16"], world=2)
        out["2-process-gloo"] = state_hash(os.path.join(tmp, "gloo"))
        print(f"2-process-gloo: {out['2-process-gloo']}", flush=True)
        cut = os.path.join(tmp, "resumed")  # 3 steps, then a resume to 6: must equal the default's 6
        _train(cut, ["--K", "128", "--max-steps", "3"])
        _train(cut, ["--K", "128", "--resume", "auto"])
        out["resume-at-3"] = state_hash(cut)
        print(f"resume-at-3: {out['resume-at-3']} (default: {out['default']})", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--save", help="write the hashes to this JSON file")
    p.add_argument("--compare", help="compare with the hashes in this JSON file (exit 1 on any difference)")
    a = p.parse_args()
    now = hashes()
    if a.save:
        with open(a.save, "w") as fh:
            json.dump(now, fh, indent=1)
    if a.compare:
        before = json.load(open(a.compare))
        differ = [k for k in before if before[k] != now.get(k)]
        print("identical" if not differ else f"DIFFERENT: {differ}")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
