"""Run outputs: metrics.csv (one row per epoch), TensorBoard events, and curves.png at the end."""
import csv
import os

from .timing import PHASES

# time_*: each phase's share (%) of the sampled steps' time (timing.py); skipped_steps and recoveries: the guard's
# run totals (guard.py)
COLUMNS = (["epoch", "step", "loss", "lr", "momentum", "knn_top1", "pairs_per_s", "elapsed_s", "skipped_steps",
            "recoveries"] + [f"time_{p}" for p in PHASES])


class Metrics:
    def __init__(self, out: str, history: list[dict], tensorboard: bool = True):
        self.out, self.history = out, list(history)
        self.csv_path = os.path.join(out, "metrics.csv")
        self._rewrite_csv()  # a resumed run drops rows of epochs that were not checkpointed
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(out, "tb"))

    def _rewrite_csv(self):
        with open(self.csv_path, "w", newline="") as fh:
            w = csv.DictWriter(fh, COLUMNS)
            w.writeheader()
            w.writerows(self.history)

    def step(self, step: int, loss: float, lr: float) -> None:
        if self.tb:
            self.tb.add_scalar("train/loss", loss, step)
            self.tb.add_scalar("train/lr", lr, step)

    def event(self, step: int, name: str, value: float) -> None:
        """A count that changed at ``step`` (the guard's recoveries), as a TensorBoard scalar."""
        if self.tb:
            self.tb.add_scalar(f"guard/{name}", value, step)
            self.tb.flush()

    def epoch(self, row: dict) -> None:
        row = {c: row.get(c, "") for c in COLUMNS}
        self.history.append(row)
        with open(self.csv_path, "a", newline="") as fh:
            csv.DictWriter(fh, COLUMNS).writerow(row)
        if self.tb:
            for key in ("loss", "knn_top1", "pairs_per_s", "skipped_steps", "recoveries"):
                if row[key] != "":
                    self.tb.add_scalar(f"epoch/{key}", row[key], row["epoch"])
            for p in PHASES:
                if row[f"time_{p}"] != "":
                    self.tb.add_scalar(f"time_share/{p}", row[f"time_{p}"], row["epoch"])
            self.tb.flush()

    def plot(self) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [r["epoch"] for r in self.history]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        ax1.plot(epochs, [r["loss"] for r in self.history], marker="o")
        ax1.set(xlabel="epoch", ylabel="InfoNCE loss", title="training loss")
        knn = [(r["epoch"], r["knn_top1"]) for r in self.history if r["knn_top1"] != ""]
        if knn:
            ax2.plot(*zip(*knn), marker="o", color="tab:green")
        ax2.set(xlabel="epoch", ylabel="kNN top-1 (%)", title="kNN monitor (k=200, t=0.1)")
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
        fig.tight_layout()
        path = os.path.join(self.out, "curves.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def close(self):
        if self.tb:
            self.tb.close()
