"""The MoCo paper's transfer comparison on the embedded Fashion-MNIST scenes: the same Mask R-CNN (FPN) fine-tuning
schedule from (a) a MoCo backbone, (b) a supervised backbone of the same architecture trained on the labels for the
same wall time, (c) random init; box and mask AP for each.

    python benchmarks/transfer_fmnist.py                      # trains the default MoCo run first if --moco is absent
    python benchmarks/transfer_fmnist.py --moco runs/fastmoco --seeds 0 1 2 --epochs 4
    python benchmarks/transfer_fmnist.py --moco runs/fastmoco --norms bn frozen --inits moco supervised
    python benchmarks/transfer_fmnist.py --report a/results.json b/results.json   # one table + plot of both
    python benchmarks/transfer_fmnist.py --held-out --inits moco supervised moco-all random vit --epochs 2

``--held-out``: the classes the labels could help with are kept out of the detection task. Pre-training sees the
images of A = {T-shirt/top, Pullover, Dress, Coat, Shirt} only (MoCo without their labels, the supervised
baseline with them, for the MoCo run's wall time); the detector is fine-tuned and scored on scenes of
B = {Trouser, Sandal, Sneaker, Bag, Ankle boot}. ``moco-all`` is MoCo on all 60,000 training images (more
unlabelled data, labels of B's images never used); ``vit`` a MoCo v3 vit_fmnist run on A's images.

One job at a time (never two on 2 cores). Writes OUT/results.json, prints a markdown table (mean and standard
deviation over the seeds) and draws OUT/transfer_fmnist.png (box and mask AP per initialisation). Every run is a
real `fastmoco-detect` (or `fastmoco-train`) command, printed before it runs.
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from quality_fmnist import cpu_model  # noqa: E402
from supervised_fmnist import run_seconds, train_supervised  # noqa: E402

KEYS = ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50", "segm_AP75")
# fixed before any run (the held-out protocol): pre-training classes A, detection classes B
HELD_OUT_A = "T-shirt/top,Pullover,Dress,Coat,Shirt"
HELD_OUT_B = (1, 5, 7, 8, 9)
INITS = ["moco", "supervised", "random", "moco-all", "vit"]


def sh(cmd: list[str]) -> float:
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return time.time() - t0


def last_metrics(out: str) -> dict:
    with open(os.path.join(out, "metrics.csv")) as fh:
        return {k: float(v) for k, v in list(csv.DictReader(fh))[-1].items()}


def pretrained(path: str | None, out: str, train_args: list[str]) -> str:
    """A fastmoco run: ``path`` when given, else trained into ``out`` (once; kept for later calls)."""
    if path:
        return path
    if not os.path.isfile(os.path.join(out, "last.pt")):
        sh(["fastmoco-train", "--out", out, "--overwrite", "--no-progress", *train_args])
    return out


def moco_run(args) -> str:
    held = ["--classes", HELD_OUT_A] if args.held_out else []
    return pretrained(args.moco, os.path.join(args.out, "moco_A" if args.held_out else "moco"), held)


def held_out_scenes(args) -> list[str]:
    """fastmoco-detect's data arguments for scenes of the classes B (drawn once into OUT/scenes_B)."""
    from fastmoco.data.scenes import SceneSpec, write_scenes
    from fastmoco.runs.config import FMNIST_DIR

    root = write_scenes(os.path.join(args.out, "scenes_B"), FMNIST_DIR, SceneSpec(classes=HELD_OUT_B), False)
    return ["--train-json", os.path.join(root, "train.json"), "--train-images", os.path.join(root, "train"),
            "--val-json", os.path.join(root, "val.json"), "--val-images", os.path.join(root, "val")]


def sources(run: str, args, seed: int) -> dict:
    """fastmoco-detect's SOURCE and extra arguments per initialisation; all three share the MoCo run's
    architecture and input normalisation."""
    from fastmoco.runs.read import read_run

    _, cfg, meta = read_run(run)
    norm = ["--mean", ",".join(map(str, meta["mean"])), "--std", ",".join(map(str, meta["std"]))]
    sup = os.path.join(args.out, f"supervised_s{seed}.pt")
    if "supervised" in args.inits and not os.path.isfile(sup):
        budget = run_seconds(run)
        print(f"supervised: {cfg.arch} width {cfg.width}, {budget:.0f} s (the MoCo run's training time)", flush=True)
        print(json.dumps(train_supervised(run, sup, budget, seed)), flush=True)
    extra = {}
    if "moco-all" in args.inits:  # every training image, no labels
        extra["moco-all"] = (pretrained(args.moco_all, os.path.join(args.out, "moco_all"), []), [])
    if "vit" in args.inits:
        held = ["--classes", HELD_OUT_A] if args.held_out else []
        extra["vit"] = (pretrained(args.vit, os.path.join(args.out, "vit_A" if args.held_out else "vit"),
                                   ["--method", "v3", "--arch", "vit_fmnist", *held]), [])
    return {**extra, "moco": (run, []),
            "supervised": (sup, ["--stem", cfg.stem, *norm]),
            "random": ("random", ["--arch", cfg.arch, "--width", str(cfg.width), "--stem", cfg.stem,
                                  "--in-channels", str(meta["in_channels"]), *norm])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--moco", help="a fastmoco run directory (default: train the default run into OUT/moco)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--inits", nargs="+", default=["moco", "supervised", "random"], choices=INITS)
    p.add_argument("--held-out", action="store_true",
                   help="pre-train on the classes A, detect the classes B (see the module's text)")
    p.add_argument("--moco-all", help="moco-all: a MoCo run on all training images (default: train it)")
    p.add_argument("--vit", help="vit: a MoCo v3 vit_fmnist run (default: train it, on A with --held-out)")
    p.add_argument("--norms", nargs="+", default=["bn"], choices=["bn", "frozen"])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--out", default="runs/transfer_fmnist")
    p.add_argument("--report", nargs="+", metavar="RESULTS_JSON",
                   help="run nothing: the table and plot of earlier runs' results.json files (written to OUT)")
    p.add_argument("detect_args", nargs="*", help="extra fastmoco-detect arguments (after --)")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.report:
        rows = [r for path in args.report for r in json.load(open(path))]
        table(rows)
        plot(rows, os.path.join(args.out, "transfer_fmnist.png"))
        return 0
    run = moco_run(args)
    data = held_out_scenes(args) if args.held_out else []
    rows = []
    for seed in args.seeds:
        src = sources(run, args, seed)
        for norm in args.norms:
            for init in args.inits:
                source, extra = src[init]
                out = os.path.join(args.out, f"{init}_{norm}_s{seed}")
                wall = sh(["fastmoco-detect", source, "--out", out, "--resume", "never", "--no-progress",
                           "--seed", str(seed), "--epochs", str(args.epochs), "--norm", norm,
                           "--eval-every", str(args.epochs), *extra, *data, *args.detect_args])  # scored at the end
                row = dict(init=init, norm=norm, seed=seed, wall_s=round(wall, 1), held_out=args.held_out,
                           detect_args=" ".join(args.detect_args), **last_metrics(out))
                print(json.dumps(row), flush=True)
                rows.append(row)
                with open(os.path.join(args.out, "results.json"), "w") as fh:
                    json.dump(rows, fh, indent=1)
    table(rows)
    plot(rows, os.path.join(args.out, "transfer_fmnist.png"))
    return 0


def _mean_sd(xs):
    return f"{statistics.mean(xs):.2f}" + (f" ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else "")


def _setting(r) -> str:
    """What a fine-tuning ran with beyond its init and norm: its epochs and any extra fastmoco-detect arguments."""
    return " ".join(filter(None, [f"{int(r['epoch'])} ep", r.get("detect_args", "")]))


def groups(rows):
    """Rows by (init, norm, setting): a longer schedule or another image size never shares a mean."""
    out = {}
    for r in rows:
        out.setdefault((r["init"], r["norm"], _setting(r)), []).append(r)
    return out


def table(rows) -> None:
    seeds = sorted({r["seed"] for r in rows})
    print(f"\nmachine: {cpu_model()}, {os.cpu_count()} cores; seeds {seeds}\n")
    print("| init | fine-tuning | norm | seeds | box AP | box AP50 | box AP75 | mask AP | mask AP50 | mask AP75 "
          "| wall per run |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (init, norm, setting), rs in groups(rows).items():
        cells = " | ".join(_mean_sd([r[k] for r in rs]) for k in KEYS)
        wall = statistics.mean(r["wall_s"] for r in rs)
        print(f"| {init} | {setting} | {norm} | {len(rs)} | {cells} | {wall:.0f} s |")


def plot(rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = groups(rows)
    names = [f"{i}\n{x}\n({n}, {len(rs)} seed{'s' * (len(rs) > 1)})".replace(" --", "\n--")  # an option a line
             for (i, n, x), rs in g.items()]
    fig, ax = plt.subplots(figsize=(1.6 * len(g) + 2, 3.6))
    for k, (key, label) in enumerate((("bbox_AP", "box AP"), ("segm_AP", "mask AP"))):
        means = [statistics.mean(r[key] for r in rs) for rs in g.values()]
        sds = [statistics.stdev([r[key] for r in rs]) if len(rs) > 1 else 0 for rs in g.values()]
        ax.bar([i + 0.38 * k for i in range(len(g))], means, 0.36, yerr=sds, capsize=3, label=label)
    ax.set_xticks([i + 0.19 for i in range(len(g))], names)
    ax.set_ylabel("COCO AP (%)")
    inits = dict.fromkeys(i for i, _, _ in g)  # the inits drawn, once each
    ax.set_title("Mask R-CNN on Fashion-MNIST scenes: " + " vs ".join(inits))
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1))  # beside the axes: inside, it hid the tallest bars
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    raise SystemExit(main())
