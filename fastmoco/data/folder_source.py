"""An ImageFolder as a training source: DALI or DataLoader workers, both on the shared epoch plan."""
import copy
import warnings

import numpy as np
import torch

from . import dali
from fastmoco.errors import DataError
from .folder import TwoViews
from .plan import EpochPlan, batch_seed
from .shards.reader import SkipReport
from .transforms import IMAGENET_MEAN, IMAGENET_STD, RGB_HUE, RGB_JITTER, eval_transform, view_transform


class RgbSource:
    """What the RGB file sources (ImageFolders, shards) share: the two views (and small ones) of the recipe at
    ImageNet's normalisation, the DALI runner for them, moving a DataLoader batch to the device, eval batches."""

    def _setup_views(self, cfg, device, loader: str):
        """Sets the source's shape fields (and ``self.dali`` for DALI); returns (view transforms, small or None)."""
        self.device, self.loader = torch.device(device), loader
        self.image_size = cfg.image_size or 32
        self.in_channels, self.raw_shape = 3, None
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.workers = cfg.workers
        self.small_crops, self.small_size = cfg.small_crops, cfg.small_size(self.image_size)
        lo, hi = cfg.small_crop_range()
        views = [view_transform(cfg.aug, self.image_size, 3, self.mean, self.std, cfg.crop_min_scale, view=v)
                 for v in (0, 1)]
        small = view_transform(cfg.aug, self.small_size, 3, self.mean, self.std, lo, hi) if self.small_crops else None
        if loader == "dali":
            self.dali = dali.epochs_for(cfg, self.device, self.image_size, self.small_size, 3, self.mean, self.std,
                                        RGB_JITTER, RGB_HUE[cfg.aug], 0.0)
        return views, small

    def _to_device(self, views: list) -> tuple:
        """A DataLoader batch's views on the device; small views (B, S, C, s, s) -> (S*B, C, s, s), crop-major like
        the other loaders."""
        if self.small_crops:
            views[2] = views[2].transpose(0, 1).flatten(0, 1)
        return tuple(v.to(self.device, non_blocking=True) for v in views)

    def _eval_batches(self, ds):
        """(images, labels) of ``ds`` at the evaluation transform; samples a sharded set replaced (it yields a
        third, 'replaced' field) are reported once at the end."""
        ds.transform = eval_transform(self.image_size, self.mean, self.std)
        report = SkipReport()
        for x, y, *replaced in torch.utils.data.DataLoader(ds, batch_size=256, num_workers=self.workers):
            if replaced:
                report.add(replaced[0])
            yield x.to(self.device), y
        line = report.line(ds.root, "could not be read for the kNN monitor and were replaced by the next readable one")
        if line:
            warnings.warn(line, stacklevel=2)

    def monitor_off(self) -> str:
        """Why the kNN monitor does not run (when ``knn_sets()`` is None)."""
        return "kNN monitor off: no labelled validation set (pass --val: an ImageFolder or labelled shards)"


class FolderData(RgbSource, EpochPlan):
    """An ImageFolder: DALI decodes each image once and makes both views, or DataLoader workers run the
    per-sample v2 pipeline twice per image; either way each image's draws are seeded by its position in the epoch
    (so neither the worker count nor a resume changes them)."""

    def __init__(self, cfg, device, train_ds, val_ds, rank=0, world=1, loader="torch"):
        EpochPlan.__init__(self, cfg, len(train_ds), rank, world)
        if loader == "dali":
            dali.check_names(path for path, _ in train_ds.samples)
        views, small = self._setup_views(cfg, device, loader)
        self.train_ds, self.val_ds = train_ds, val_ds
        self.pairs = TwoViews(train_ds, views, small, self.small_crops)
        if loader == "dali":
            self.undecodable = set()  # files DALI failed to decode: replaced from then on

    def _readable_path(self, i: int) -> str:
        """The path of sample i, or of the next sample after it that DALI has not failed to decode."""
        n = len(self.train_ds.samples)
        for k in range(n):
            path = self.train_ds.samples[(i + k) % n][0]
            if path not in self.undecodable:
                return path
        raise DataError(f"{self.train_ds.root}: none of its {n} images could be decoded")

    def _dali_epoch(self, epoch: int, skip: int):
        """DALI reads this rank's files in plan order; a file it cannot decode (the pipeline stops, naming it) is
        replaced by the next readable one and the pipeline restarts at the batch it failed in."""
        plan = list(self.plan(epoch, skip))
        done = 0
        while done < len(plan):
            files = [self._readable_path(int(i)) for _, idx in plan[done:] for i in idx]
            sizes = np.array([self.train_ds.image_sizes[f] for f in files]).reshape(-1, 2)  # (n, 2)
            seeds = [batch_seed(self.seed, epoch, start) for start, _ in plan[done:]]
            try:
                for views in self.dali.folder(files, sizes, seeds):
                    done += 1
                    yield views
            except RuntimeError as exc:
                bad = dali.failed_file(exc)
                if bad is None or bad in self.undecodable:
                    raise DataError(f"DALI pipeline failed: {dali.reason(exc)}") from exc
                self.undecodable.add(bad)
        replaced = sum(self.train_ds.samples[int(i)][0] in self.undecodable for _, idx in plan for i in idx)
        dali.warn_replaced(self.train_ds.root, replaced, epoch)

    def epoch(self, epoch: int, skip: int = 0):
        if self.loader == "dali":
            yield from self._dali_epoch(epoch, skip)
            return
        batches = [[(int(i), batch_seed(self.seed, epoch, start) + j) for j, i in enumerate(idx)]
                   for start, idx in self.plan(epoch, skip)]
        loader = torch.utils.data.DataLoader(
            self.pairs, batch_sampler=batches, num_workers=self.workers, pin_memory=self.device.type == "cuda",
            persistent_workers=False)
        undecodable = 0
        for *views, skipped in loader:
            undecodable += int(skipped.sum())
            yield self._to_device(views)
        if undecodable:
            warnings.warn(f"{self.train_ds.root}: {undecodable} image(s) could not be decoded in epoch {epoch + 1} "
                          "and were replaced by the next readable image", stacklevel=2)

    def knn_sets(self):
        if self.val_ds is None:
            return None
        bank = copy.copy(self.train_ds)  # the same (verified, subset) files, with the eval transform
        return lambda: self._eval_batches(bank), lambda: self._eval_batches(self.val_ds)
