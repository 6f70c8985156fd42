"""MoCo's ablations on Fashion-MNIST, each run at the same short budget, beside the papers' ImageNet figures.

    python benchmarks/ablations_fmnist.py                          # every group (~50 min on 2 CPU cores)
    python benchmarks/ablations_fmnist.py --groups momentum queue  # some groups
    python benchmarks/ablations_fmnist.py --epochs 1 -- --subset 4096   # after --: extra fastmoco-train flags

Groups (every run = the default recipe at ``--epochs`` epochs with K=4096, plus the group's change):
  momentum     m in {0, 0.9, 0.99, 0.999, 0.9999} at K=4096, MLP head, T=0.1 (MoCo v1 paper, Section 4.1);
  queue        K in {256, 1024, 4096, 16384, 65536}, MLP head, T=0.1 (MoCo v1 paper, Figure 3);
  temperature  T in {0.07, 0.1, 0.2, 0.3, 0.5} with the linear and the MLP head (MoCo v2 paper, Table 1's note);
  ladder       the MoCo v2 ladder on the papers' own presets: v1 -> +MLP -> +aug+ -> MLP+aug+ -> +cosine
               (MoCo v2 paper, Table 1).

Each run is one ``fastmoco-train`` process under OUT/runs/<name>; a run whose directory already holds its
result, trained with the same settings, is not run again, so an interrupted sweep picks up where it stopped. Identical
settings shared by two groups run once. Writes OUT/ablations.csv, OUT/ablations.md (the table, with the
papers' figures) and OUT/ablations.png (one panel per group) plus OUT/momentum_loss.png (per-step loss).
"""
import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def cpu_model() -> str:
    """The CPU's model string, as quality_fmnist.py reports it (loaded by path: benchmarks/ is not a package, and
    putting it on sys.path would let its conftest shadow the tests' one in processes spawned later)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("quality_fmnist", os.path.join(HERE, "quality_fmnist.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.cpu_model()


@dataclass
class Run:
    group: str
    label: str  # the x value or the ladder step, as shown in the table
    args: list  # fastmoco-train flags on top of the base budget
    paper: str = ""  # the papers' ImageNet linear top-1 for this setting ("" = not reported)
    fixed: list = field(default_factory=list)  # flags the group holds fixed (not part of the name)
    result: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Directory name, from the flags."""
        return "base" if not self.args else "_".join(a.lstrip("-").replace(".", "p") for a in self.args)

    def settings(self, base: list) -> tuple:
        """The resolved training settings (what decides whether two runs are the same run)."""
        from fastmoco.cli.train import config_from_args

        cfg = config_from_args(self.argv(base)).resolved().to_dict()
        return tuple(sorted((k, str(v)) for k, v in cfg.items() if k not in RUN_ONLY))

    def argv(self, base: list) -> list:
        return [*base, *self.fixed, *self.args]

    def command(self, base: list) -> str:
        return shlex.join(["fastmoco-train", *self.argv(base)])


PAPER_MOMENTUM = {"0": "fails (loss oscillates)", "0.9": "55.2", "0.99": "57.8", "0.999": "59.0", "0.9999": "58.9"}
PAPER_T = {"linear": {"0.07": "60.6", "0.1": "60.7", "0.2": "59.0", "0.3": "58.2", "0.5": "56.4"},
           "mlp": {"0.07": "62.9", "0.1": "64.9", "0.2": "66.2", "0.3": "65.7", "0.5": "64.3"}}
LADDER = [  # (step, flags, MoCo v2 Table 1, 200 epochs)
    ("v1 baseline", ["--preset", "v1"], "60.6"),
    ("+MLP", ["--preset", "v1", "--head", "mlp", "--T", "0.2"], "66.2"),
    ("+aug+", ["--preset", "v1", "--aug", "v2"], "63.4"),
    ("MLP + aug+", ["--preset", "v1", "--head", "mlp", "--T", "0.2", "--aug", "v2"], "67.3"),
    ("MLP + aug+ + cos (= v2)", ["--preset", "v2"], "67.5"),
]
GROUPS = ("momentum", "queue", "temperature", "ladder")
# The recipe every run shares, on top of --epochs: the fmnist recipe with the MoCo paper's ablation queue (K=4096)
# on the model the recorded table used (ResNet-10 w16, lr 0.06, the images' own 28 px), written out so the table
# keeps its meaning when the training defaults change.
BASE = ["--K", "4096", "--arch", "resnet10", "--width", "16", "--lr", "0.06", "--image-size", "0"]
HEAD = ["--head", "mlp", "--T", "0.1"]  # the momentum and queue groups' head (MoCo v2's MLP) and temperature
RUN_ONLY = ("out", "overwrite", "progress")  # settings that do not change what is trained


def plan(groups) -> list[Run]:
    runs = []
    if "momentum" in groups:
        runs += [Run("momentum", m, ["--m", m], PAPER_MOMENTUM[m], HEAD) for m in PAPER_MOMENTUM]
    if "queue" in groups:
        runs += [Run("queue", str(k), ["--K", str(k)], "60.6" if k == 65536 else "", HEAD) for k in
                 (256, 1024, 4096, 16384, 65536)]
    if "temperature" in groups:
        runs += [Run(f"temperature/{head}", t, ["--head", head, "--T", t], PAPER_T[head][t])
                 for head in ("linear", "mlp") for t in PAPER_T[head]]
    if "ladder" in groups:
        runs += [Run("ladder", step, flags, paper) for step, flags, paper in LADDER]
    return runs


def loss_curve(run_dir: str) -> list[float]:
    """The per-step training loss the run logged to TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(run_dir, "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.value for e in acc.Scalars("train/loss")] if "train/loss" in acc.Tags()["scalars"] else []


def execute(run: Run, base: list, out: str) -> dict:
    """Train one setting (or read the result it already left) and summarise it."""
    run_dir = os.path.join(out, "runs", run.name)
    done = os.path.join(run_dir, "ablation.json")
    if os.path.isfile(done) and _trained_as(run_dir, run.settings(base)):
        with open(done) as fh:
            return json.load(fh)
    cmd = ["fastmoco-train", *run.argv(base), "--no-progress", "--overwrite", "--out", run_dir]
    print(f"[{run.group} {run.label}] {shlex.join(cmd)}", flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.time() - t0
    if proc.returncode:
        sys.stdout.write(proc.stdout)
        raise SystemExit(f"fastmoco-train failed ({proc.returncode}) for {run.group} {run.label}")
    with open(os.path.join(run_dir, "metrics.csv")) as fh:
        rows = list(csv.DictReader(fh))
    losses = loss_curve(run_dir)
    half = losses[len(losses) // 2:]
    result = dict(knn=float(rows[-1]["knn_top1"]), wall_s=round(wall, 1), steps=int(rows[-1]["step"]),
                  final_loss=round(float(rows[-1]["loss"]), 4),
                  # spread of the per-step loss over the second half of training: large when it oscillates
                  loss_std_2nd_half=round(statistics.pstdev(half), 4) if half else float("nan"),
                  losses=losses)
    with open(done + ".tmp", "w") as fh:
        json.dump(result, fh)
    os.replace(done + ".tmp", done)
    print(f"    kNN {result['knn']:.2f} %  loss {result['final_loss']}  {wall:.0f} s", flush=True)
    return result


def _trained_as(run_dir: str, settings: tuple) -> bool:
    """Whether the run in run_dir was trained with these settings (its saved config.yaml agrees on each)."""
    import yaml

    try:
        with open(os.path.join(run_dir, "config.yaml")) as fh:
            saved = yaml.safe_load(fh)
    except OSError:
        return False
    return all(str(saved.get(k)) == v for k, v in settings if v != "None")  # None: left to the device


def write_table(runs: list[Run], base: list, out: str, header: str) -> str:
    lines = [header, "", "| group | setting | kNN top-1 (FMNIST, this budget) | final loss | loss std, 2nd half | "
             "wall | paper (ImageNet linear top-1) |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        res = r.result
        lines.append(f"| {r.group} | {r.label} | {res['knn']:.2f} % | {res['final_loss']:.3f} | "
                     f"{res['loss_std_2nd_half']:.3f} | {res['wall_s']:.0f} s | {r.paper or '-'} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "ablations.md"), "w") as fh:
        fh.write(text)
    with open(os.path.join(out, "ablations.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["group", "setting", "knn_top1", "final_loss", "loss_std_2nd_half", "wall_s", "steps", "paper",
                    "command"])
        for r in runs:
            res = r.result
            w.writerow([r.group, r.label, res["knn"], res["final_loss"], res["loss_std_2nd_half"], res["wall_s"],
                        res["steps"], r.paper, r.command(base)])
    return text


def _paper_value(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def plot(runs: list[Run], out: str) -> list[str]:
    """ablations.png (one panel per group, FMNIST kNN with the paper's figure on a second axis) and
    momentum_loss.png (the per-step loss of every momentum)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [g for g in GROUPS if any(r.group.startswith(g) for r in runs)]
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(11, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, g in zip(axes.flat, panels):
        lines = sorted({r.group for r in runs if r.group.startswith(g)})
        twin = ax.twinx()
        for i, line in enumerate(lines):
            sel = [r for r in runs if r.group == line]
            xs = list(range(len(sel)))
            color = f"C{i}"
            ax.plot(xs, [r.result["knn"] for r in sel], "o-", color=color, label=f"{line.split('/')[-1]} (FMNIST kNN)")
            paper = [(x, _paper_value(r.paper)) for x, r in zip(xs, sel) if _paper_value(r.paper) is not None]
            if paper:
                twin.plot(*zip(*paper), "s--", color=color, alpha=0.5, label=f"{line.split('/')[-1]} (paper)")
            ax.set_xticks(xs, [r.label for r in sel], rotation=20 if g == "ladder" else 0,
                          fontsize=7 if g == "ladder" else 9)
        ax.set(title=g, ylabel="FMNIST kNN top-1 (%)", xlabel={"momentum": "m", "queue": "K",
                                                                "temperature": "T", "ladder": ""}[g])
        twin.set_ylabel("paper: ImageNet linear top-1 (%, dashed)")
        ax.grid(alpha=0.3)
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(handles=handles, fontsize=7, loc="lower right")
    fig.tight_layout()
    paths = [os.path.join(out, "ablations.png")]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    mom = [r for r in runs if r.group == "momentum"]
    if mom:
        fig, ax = plt.subplots(figsize=(7, 4))
        for r in mom:
            ax.plot(r.result["losses"], lw=0.7, label=f"m={r.label}")
        ax.set(xlabel="step", ylabel="InfoNCE loss", title="training loss per step, by key-encoder momentum")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        paths.append(os.path.join(out, "momentum_loss.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--groups", nargs="+", choices=GROUPS, default=list(GROUPS))
    p.add_argument("--epochs", type=int, default=2, help="the budget of every run, in epochs (default 2)")
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "ablations"))
    p.add_argument("train_args", nargs="*", help="extra fastmoco-train flags for every run (after --)")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    base = ["--epochs", str(args.epochs), *BASE, *args.train_args]
    runs = plan(args.groups)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    results = {}
    for run in runs:
        key = run.settings(base)
        if key not in results:  # a setting two groups share (K=4096 is the default m's run) runs once
            results[key] = execute(run, base, args.out)
        run.result = results[key]
    import torch

    header = (f"Ablations: `{shlex.join(['python', 'benchmarks/ablations_fmnist.py', *sys.argv[1:]])}`; every run = "
              f"`fastmoco-train {shlex.join(base)}` + the setting; {len(results)} runs, "
              f"{sum(r['wall_s'] for r in results.values()) / 60:.1f} min of training; {cpu_model()}, "
              f"{os.cpu_count()} cores; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}.")
    print(write_table(runs, base, args.out, header))
    for path in plot(runs, args.out):
        print("plot:", path)
    print(f"total wall time {(time.time() - t0) / 60:.1f} min; table: {os.path.join(args.out, 'ablations.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
