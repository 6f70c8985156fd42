"""Sharded WebDataset data as a training source: the shard epoch plan (``plan.ShardPlan``), samples read by index,
the same two views (and multi-crop) as an ImageFolder, seeded by position, through either loader.

The DALI loader is fed each sample's bytes by the same plan (an external source into ``fn.decoders.image``)
instead of reading the tars with ``fn.readers.webdataset``: DALI's reader shards and shuffles by its own rules
(no balanced sample-granular split, a shuffle buffer that a mid-epoch resume cannot replay), while one plan for
both loaders gives the same samples in the same batches and an exact resume."""
import warnings

import numpy as np
import torch

from . import dali
from fastmoco.errors import DataError
from .plan import ShardPlan, batch_seed
from .shards import ShardReader, SkipReport
from .shards.reader import Skip
from .folder_source import RgbSource


class ShardPairs(torch.utils.data.Dataset):
    """item (shard, sample, seed) -> (view 1, view 2, [small views (S, C, s, s),] skipped samples as one string)."""

    def __init__(self, urls, counts, transforms, small=None, small_crops: int = 0):
        self.urls, self.counts = urls, counts
        self.transforms, self.small, self.small_crops = tuple(transforms), small, small_crops
        self._reader = None  # made in each worker process: file descriptors are not shared

    @property
    def reader(self) -> ShardReader:
        if self._reader is None:
            self._reader = ShardReader(self.urls, self.counts)
        return self._reader

    def __len__(self):
        return int(sum(self.counts))

    def __getitem__(self, item):
        shard, i, seed = item
        img, _, skipped = self.reader.read_or_next(shard, i)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            views = (self.transforms[0](img), self.transforms[1](img))
            if self.small_crops:
                views += (torch.stack([self.small(img) for _ in range(self.small_crops)]),)  # (S, C, s, s)
        return (*views, "\n".join(skipped))


class ShardImages(torch.utils.data.Dataset):
    """The samples of a shard set that have a readable class, in order, as (transformed image, class index,
    replaced): labelled shards for the kNN monitor and the linear protocol. A sample without a readable class
    (its shard missing or its index unreadable, no .cls member, a class index outside ``classes``) is left out and
    named in ``note``; one whose image does not decode is replaced by the next readable sample, with that sample's
    class, and ``replaced`` names it ('' when nothing was replaced)."""

    def __init__(self, shards, transform=None):
        if shards.classes is None:
            raise DataError(f"{shards.root}: these shards hold no classes (.cls members); evaluation needs labels")
        self.shards, self.transform = shards, transform
        self.root, self.classes, self.class_to_idx = shards.root, list(shards.classes), shards.class_to_idx
        self._reader = None
        self.remap = None  # class index in these shards -> the training set's, once relabelled
        self.items, self.targets, left_out = [], [], SkipReport()
        for shard, count in enumerate(shards.counts.tolist()):
            for i in range(count):
                label = self.reader.label(shard, i)
                if label is None or not 0 <= label < len(self.classes):
                    why = "no readable class" if label is None else f"class index {label} not among its classes"
                    left_out.add([f"{self.reader.name(shard)}:{self.reader.key(shard, i)} ({why})"])
                    continue
                self.items.append((shard, i))
                self.targets.append(label)
        if not self.items:
            raise DataError(f"{shards.root}: none of its {shards.samples} samples has a readable class "
                            f"(first: {left_out.names[0] if left_out.names else '?'})")
        self.note = left_out.line(shards.root, "left out of evaluation (no usable class)")

    @property
    def reader(self) -> ShardReader:
        if self._reader is None:
            self._reader = ShardReader(self.shards.urls, self.shards.counts)
        return self._reader

    def relabel(self, class_to_idx: dict, flag: str) -> None:
        """Class indices matched by name to a training set's ``class_to_idx`` (a class it lacks is an error)."""
        extra = [c for c in self.classes if c not in class_to_idx]
        if extra:
            raise DataError(f"{flag} {self.root} has classes the training data lacks: {', '.join(extra[:5])}")
        self.remap = [class_to_idx[c] for c in self.classes]
        self.targets = [self.remap[t] for t in self.targets]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, k):
        replaced = ""
        for step in range(len(self.items)):
            shard, i = self.items[(k + step) % len(self.items)]
            try:
                img, label = self.reader.read(shard, i)
                break
            except Skip as why:
                replaced = replaced or f"{self.reader.name(shard)}:{self.reader.key(shard, i)} ({why})"
        else:
            raise DataError(f"{self.root}: none of its {len(self.items)} labelled samples could be read "
                            f"(first: {replaced})")
        if self.remap is not None:
            label = self.remap[label]
        return (self.transform(img) if self.transform else img), label, replaced

    def __getstate__(self):  # to DataLoader workers without open files
        return {**self.__dict__, "_reader": None}


class _EncodedBatches:
    """An epoch's micro-batches for DALI, read from the shards only as DALI is fed: (seed, sizes (B, 2), [bytes
    as uint8 arrays]); samples that cannot be used are replaced (``ShardReader.read_or_next``) and reported."""

    def __init__(self, plan: list, reader: ShardReader, seed: int, epoch: int, report: SkipReport):
        self.plan, self.reader, self.seed, self.epoch, self.report = plan, reader, seed, epoch, report

    def __len__(self):
        return len(self.plan)

    def __getitem__(self, k):
        start, refs = self.plan[k]
        blobs, sizes = [], []
        for shard, i in refs:
            data, hw, skipped = self.reader.read_or_next(shard, i, self.reader.encoded)
            self.report.add(skipped)
            blobs.append(np.frombuffer(data, dtype=np.uint8))
            sizes.append(hw)
        return batch_seed(self.seed, self.epoch, start), np.array(sizes), blobs


class ShardData(RgbSource, ShardPlan):
    """Training on shards: DataLoader workers decode and augment (torch), or the main process reads each
    sample's bytes by index and DALI decodes (on the GPU when training there) and augments (dali)."""

    def __init__(self, cfg, device, shards, val_ds, rank=0, world=1, loader="torch"):
        ShardPlan.__init__(self, cfg, shards.counts, rank, world, cfg.shard_shuffle)
        views, small = self._setup_views(cfg, device, loader)
        self.shards, self.val_ds, self.cfg_val = shards, val_ds, cfg.val
        self.pairs = ShardPairs(shards.urls, shards.counts, views, small, self.small_crops)

    def _dali_epoch(self, epoch: int, skip: int):
        report = SkipReport()
        batches = _EncodedBatches(list(self.plan(epoch, skip)), ShardReader(self.shards.urls, self.shards.counts),
                                  self.seed, epoch, report)
        try:
            yield from self.dali.encoded(batches)
        except RuntimeError as exc:  # a sample whose header passed but whose data DALI cannot decode
            raise DataError(f"{self.shards.root}: DALI could not decode a sample of epoch {epoch + 1} "
                            f"({dali.reason(exc)}); --loader torch skips such samples") from exc
        report.warn(self.shards.root, epoch)

    def epoch(self, epoch: int, skip: int = 0):
        if self.loader == "dali":
            yield from self._dali_epoch(epoch, skip)
            return
        batches = ([(shard, i, batch_seed(self.seed, epoch, start) + j) for j, (shard, i) in enumerate(refs)]
                   for start, refs in self.plan(epoch, skip))
        loader = torch.utils.data.DataLoader(self.pairs, batch_sampler=batches, num_workers=self.workers,
                                             pin_memory=self.device.type == "cuda", persistent_workers=False)
        report = SkipReport()
        for *views, skipped in loader:
            report.add(n for s in skipped for n in s.split("\n"))
            yield self._to_device(views)
        report.warn(self.shards.root, epoch)

    def knn_sets(self):
        """The monitor: this training set's labelled shards as the bank, --val (shards or a folder) as queries."""
        if self.val_ds is None or self.shards.classes is None:
            return None
        bank = ShardImages(self.shards)
        if bank.note:
            warnings.warn(bank.note, stacklevel=2)
        return (lambda: self._eval_batches(bank), lambda: self._eval_batches(self.val_ds))

    def monitor_off(self) -> str:
        if self.val_ds is None and self.shards.classes is None:
            return (f"kNN monitor off: the training shards {self.shards.root} hold no classes (.cls members), and "
                    "the monitor's memory bank needs them" + (" (--val alone cannot score)" if self.cfg_val else ""))
        return super().monitor_off()
