"""Training data as the loop consumes it: two augmented views per image, plus labelled sets for the kNN monitor.
With multi-crop (``cfg.small_crops``) each micro-batch also carries S low-resolution views of every image, as
one (S*B, C, s, s) batch, crop-major, drawn after the two views (so those do not change).

``build_data(cfg, device)`` picks the source from ``cfg.data``: a folder holding Fashion-MNIST's IDX files (the
embedded default) is loaded into memory; any other folder is an ImageFolder. ``cfg.loader`` picks who makes the
two views: "dali" (``dali.py``: decode once, augment twice, on the GPU when training there) or "torch" (in-memory
data: batched tensor augmentation, ``BatchAugment``; folders: DataLoader workers running per-sample
torchvision.transforms.v2). Every epoch's order comes from (seed, epoch), the same for both loaders, and every
micro-batch's augmentation draws from its position in that order, so a run resumed anywhere, even mid-epoch or
with another process count, sees the same batches as the uninterrupted run. Under torchrun each process takes its
own slice of every step (see ``_Sharded``).
"""
import copy
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from . import dali
from .errors import DataError
from .fmnist import is_fmnist_dir, load_fmnist
from .folder import TwoViews, image_folder
from .labelled import align_classes
from .transforms import FMNIST_MEAN, FMNIST_STD, IMAGENET_MEAN, IMAGENET_STD, RGB_HUE, RGB_JITTER, BatchAugment, \
    eval_transform, view_transform

# Who makes the two views when --loader is left unset: DALI for ImageFolders (when installed); for in-memory
# Fashion-MNIST the batched tensor augmentation, the faster of the two on the 2-core CPU (benchmarks/RESULTS.md
# section 6: 15,114 vs 9,348 images/s; a training epoch of 12,800 images 21.1 vs 22.4 s).
LOADERS = ("dali", "torch")
MEMORY_DEFAULT_LOADER = "torch"

__all__ = ["DataError", "build_data", "load_fmnist", "image_folder", "BatchAugment", "view_transform"]


def _dali_epochs(cfg, device, size, small_size, channels, mean, std, strength, hue, erase_p) -> "dali.DaliEpochs":
    """The DALI runner of a source: two views of the recipe, plus ``cfg.small_crops`` small ones."""
    lo, hi = cfg.small_crop_range()
    specs = [dali.ViewSpec(cfg.aug, size, channels, mean, std, cfg.crop_min_scale, strength, hue, erase_p, view=v)
             for v in (0, 1)]  # v3's two views differ (blur, solarize)
    small = dali.ViewSpec(cfg.aug, small_size, channels, mean, std, lo, strength, hue, erase_p, max_scale=hi)
    return dali.DaliEpochs(specs, cfg.batch_size, device, cfg.workers, small, cfg.small_crops)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def _batch_seed(seed: int, epoch: int, start: int) -> int:
    """The augmentation seed of the micro-batch that starts at position ``start`` of the epoch's order: draws
    depend on where a batch sits in the epoch, not on how the loop got there (resume, process count)."""
    return ((seed * 100_003 + epoch) * 1_000_003 + start) % (1 << 62)


class _Sharded:
    """The epoch plan shared by every source: one shuffled order per (seed, epoch), identical on every rank;
    an optimizer step takes ``batch * world * accum`` consecutive samples of it, micro-batch j of rank r the
    slice at ``(j * world + r) * batch``. Across ranks every image appears exactly once per epoch (the last
    partial step is dropped: Split-BN and shuffle-BN need full, equal batches)."""

    def __init__(self, cfg, num_samples: int, rank: int, world: int):
        self.batch_size, self.seed, self.rank, self.world = cfg.batch_size, cfg.seed, rank, world
        self.accum, self.num_samples = cfg.accum_steps, num_samples
        self.samples_per_step = cfg.batch_size * world * cfg.accum_steps
        if num_samples < self.samples_per_step:
            raise DataError(f"only {num_samples} training images, fewer than one optimizer step of "
                            f"{self.samples_per_step} (batch {cfg.batch_size} x {world} process(es) x "
                            f"{cfg.accum_steps} micro-batch(es))")

    def __len__(self):
        """Optimizer steps in a full epoch."""
        return self.num_samples // self.samples_per_step

    def steps(self, skip: int = 0) -> int:
        """Optimizer steps left in an epoch once ``skip`` of its samples are done."""
        return (self.num_samples - skip) // self.samples_per_step

    def plan(self, epoch: int, skip: int = 0, device=None):
        """(start position, sample indices) of this rank's micro-batches, from sample ``skip`` of the epoch; the
        indices on ``device`` (one copy per epoch, not one per batch)."""
        order = torch.randperm(self.num_samples, generator=_epoch_generator(self.seed, epoch)).to(device)
        for s in range(self.steps(skip)):
            for j in range(self.accum):
                start = skip + s * self.samples_per_step + (j * self.world + self.rank) * self.batch_size
                yield start, order[start:start + self.batch_size]


class TensorData(_Sharded):
    """In-memory uint8 images (Fashion-MNIST): batched tensor augmentation in the training process, or DALI fed
    from memory."""

    def __init__(self, cfg, device, images, labels, test_images, test_labels, rank=0, world=1, loader="torch"):
        super().__init__(cfg, len(images), rank, world)
        self.device, self.loader = torch.device(device), loader
        # on a GPU the uint8 images live there (Fashion-MNIST: 47 MB), so a step copies nothing from the host and
        # never waits for the GPU (a pageable host-to-device copy would be a sync per step)
        self.images = images.to(device) if self.device.type == "cuda" else images  # (N, 1, 28, 28) uint8
        self.labels = labels  # (N,)
        self.test_images, self.test_labels = test_images, test_labels
        self.raw_shape = tuple(images.shape[1:])
        self.in_channels = images.shape[1]
        self.image_size = cfg.image_size or images.shape[-1]
        self.mean, self.std = FMNIST_MEAN, FMNIST_STD
        self.augments = [BatchAugment(cfg.aug, self.image_size, self.mean, self.std, cfg.crop_min_scale, cfg.jitter,
                                      cfg.erase_p, view=v).to(device) for v in (0, 1)]  # v3's views differ
        self.small_crops, self.small_size = cfg.small_crops, cfg.small_size(self.image_size)
        lo, hi = cfg.small_crop_range()
        self.small_augment = BatchAugment(cfg.aug, self.small_size, self.mean, self.std, lo, cfg.jitter, cfg.erase_p,
                                          max_scale=hi).to(device) if self.small_crops else None
        if loader == "dali":
            self.dali = _dali_epochs(cfg, self.device, self.image_size, self.small_size, self.in_channels, self.mean,
                                     self.std, cfg.jitter, 0.0, cfg.erase_p)
            self.host_hwc = images.permute(0, 2, 3, 1).contiguous().numpy()  # (N, 28, 28, 1) uint8, DALI's layout

    def epoch(self, epoch: int, skip: int = 0):
        """This rank's micro-batches of two views (and the small views), from sample ``skip`` of the epoch on."""
        if self.loader == "dali":
            plan = list(self.plan(epoch, skip))
            yield from self.dali.memory(self.host_hwc, [idx.numpy() for _, idx in plan],
                                        [_batch_seed(self.seed, epoch, start) for start, _ in plan])
            return
        for start, idx in self.plan(epoch, skip, self.images.device):
            x = self.images[idx]  # (B, 1, 28, 28) uint8, on the images' device
            g = torch.Generator(self.device).manual_seed(_batch_seed(self.seed, epoch, start))
            views = (self.augments[0](x, g), self.augments[1](x, g))
            if self.small_crops:
                views += (torch.cat([self.small_augment(x, g) for _ in range(self.small_crops)]),)  # (S*B, C, s, s)
            yield views

    def _eval_batches(self, images, batch: int = 1024):
        mean = torch.tensor(self.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, -1, 1, 1)
        for i in range(0, len(images), batch):
            x = images[i:i + batch].to(self.device).float() / 255.0  # (b, C, H, W)
            if x.shape[-1] != self.image_size:
                x = F.interpolate(x, size=self.image_size, mode="bilinear", antialias=True, align_corners=False)
            yield (x - mean) / std

    def knn_sets(self):
        """(memory-bank batches, bank labels, query batches, query labels), or None without labels."""
        return (lambda: self._eval_batches(self.images), self.labels,
                lambda: self._eval_batches(self.test_images), self.test_labels)


class FolderData(_Sharded):
    """An ImageFolder: DALI decodes each image once and makes both views, or DataLoader workers run the
    per-sample v2 pipeline twice per image; either way each image's draws are seeded by its position in the epoch
    (so neither the worker count nor a resume changes them)."""

    def __init__(self, cfg, device, train_ds, val_ds, rank=0, world=1, loader="torch"):
        super().__init__(cfg, len(train_ds), rank, world)
        self.device, self.loader = torch.device(device), loader
        self.image_size = cfg.image_size or 32
        self.in_channels, self.raw_shape = 3, None
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.workers = cfg.workers
        self.train_ds, self.val_ds = train_ds, val_ds
        self.small_crops, self.small_size = cfg.small_crops, cfg.small_size(self.image_size)
        lo, hi = cfg.small_crop_range()
        views = [view_transform(cfg.aug, self.image_size, 3, self.mean, self.std, cfg.crop_min_scale, view=v)
                 for v in (0, 1)]
        small = view_transform(cfg.aug, self.small_size, 3, self.mean, self.std, lo, hi) if self.small_crops else None
        self.pairs = TwoViews(train_ds, views, small, self.small_crops)
        if loader == "dali":
            dali.check_names(path for path, _ in train_ds.samples)
            self.dali = _dali_epochs(cfg, self.device, self.image_size, self.small_size, 3, self.mean, self.std,
                                     RGB_JITTER, RGB_HUE[cfg.aug], 0.0)
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
            seeds = [_batch_seed(self.seed, epoch, start) for start, _ in plan[done:]]
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
        batches = [[(int(i), _batch_seed(self.seed, epoch, start) + j) for j, i in enumerate(idx)]
                   for start, idx in self.plan(epoch, skip)]
        loader = torch.utils.data.DataLoader(
            self.pairs, batch_sampler=batches, num_workers=self.workers, pin_memory=self.device.type == "cuda",
            persistent_workers=False)
        undecodable = 0
        for *views, skipped in loader:
            undecodable += int(skipped.sum())
            if self.small_crops:  # (B, S, C, s, s) -> (S*B, C, s, s), crop-major like the other loaders
                views[2] = views[2].transpose(0, 1).flatten(0, 1)
            yield tuple(v.to(self.device, non_blocking=True) for v in views)
        if undecodable:
            warnings.warn(f"{self.train_ds.root}: {undecodable} image(s) could not be decoded in epoch {epoch + 1} "
                          "and were replaced by the next readable image", stacklevel=2)

    def _eval_batches(self, ds):
        ds.transform = eval_transform(self.image_size, self.mean, self.std)
        loader = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=self.workers)
        for x, _ in loader:
            yield x.to(self.device)

    def knn_sets(self):
        if self.val_ds is None:
            return None
        bank = copy.copy(self.train_ds)  # the same (verified, subset) files, with the eval transform
        return (lambda: self._eval_batches(bank), torch.tensor(bank.targets),
                lambda: self._eval_batches(self.val_ds), torch.tensor(self.val_ds.targets))


def choose_loader(requested, in_memory: bool) -> tuple[str, str | None]:
    """(loader, notice): the requested one, or the default for the data; a one-line notice when DALI is missing."""
    if requested == "dali" and not dali.available():
        raise DataError(f"--loader dali needs NVIDIA DALI, which is not installed ({dali.INSTALL_HINT})")
    if requested:
        return requested, None
    if in_memory:
        return MEMORY_DEFAULT_LOADER, None
    if dali.available():
        return "dali", None
    return "torch", f"NVIDIA DALI is not installed ({dali.INSTALL_HINT}): images go through the torchvision DataLoader"


def build_data(cfg, device, rank: int = 0, world: int = 1):
    """The training source for ``cfg``, sharded for process ``rank`` of ``world``; ``.loader`` says who makes
    the views and ``.notice`` is a line for the log (or None)."""
    in_memory = is_fmnist_dir(cfg.data)
    loader, notice = choose_loader(cfg.loader, in_memory)
    data, val_note = _build(cfg, device, rank, world, loader, in_memory)
    data.notice = "; ".join(n for n in (notice, val_note) if n) or None
    return data


def _build(cfg, device, rank, world, loader, in_memory):
    """(the source, a note on what --val evaluates when it lacks some training classes, or None)."""
    if in_memory:
        if cfg.val:  # its monitor scores Fashion-MNIST's own test set; a folder of RGB images would not fit it
            raise DataError(f"--val {cfg.val}: training on Fashion-MNIST, the kNN monitor uses its own test set; "
                            "--val is for ImageFolder training data (fastmoco-lincls --val scores a folder against "
                            "Fashion-MNIST)")
        images, labels = load_fmnist(cfg.data, train=True)
        test_images, test_labels = load_fmnist(cfg.data, train=False)
        if cfg.subset:
            images, labels = images[:cfg.subset], labels[:cfg.subset]
        return TensorData(cfg, device, images, labels, test_images, test_labels, rank, world, loader), None
    train_ds = image_folder(cfg.data)
    if cfg.subset:
        train_ds.samples = train_ds.imgs = train_ds.samples[:cfg.subset]
        train_ds.targets = train_ds.targets[:cfg.subset]
    val_ds = image_folder(cfg.val) if cfg.val else None
    val_note = align_classes(train_ds, val_ds) if val_ds is not None else None  # labels by class name
    return FolderData(cfg, device, train_ds, val_ds, rank, world, loader), val_note
