"""Training data as the loop consumes it: two augmented views per image, plus labelled sets for the kNN monitor.

``build_data(cfg, device)`` picks the source from ``cfg.data``: a folder holding Fashion-MNIST's IDX files (the
embedded default) is loaded into memory and augmented a batch at a time; any other folder is an ImageFolder read
by DataLoader workers with per-sample torchvision.transforms.v2. Every epoch's order and augmentation draws come
from a generator seeded with (seed, epoch), so a run resumed at an epoch boundary sees the same batches.
"""
import copy

import torch
import torch.nn.functional as F

from .errors import DataError
from .fmnist import is_fmnist_dir, load_fmnist
from .folder import TwoViews, image_folder
from .transforms import FMNIST_MEAN, FMNIST_STD, IMAGENET_MEAN, IMAGENET_STD, BatchAugment, eval_transform, \
    view_transform

__all__ = ["DataError", "build_data", "load_fmnist", "image_folder", "BatchAugment", "view_transform"]


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


class TensorData:
    """In-memory uint8 images (Fashion-MNIST): batched augmentation, no workers."""

    def __init__(self, cfg, device, images, labels, test_images, test_labels):
        self.device = torch.device(device)
        self.images, self.labels = images, labels  # (N, 1, 28, 28) uint8, (N,)
        self.test_images, self.test_labels = test_images, test_labels
        self.raw_shape = tuple(images.shape[1:])
        self.in_channels = images.shape[1]
        self.image_size = cfg.image_size or images.shape[-1]
        self.mean, self.std = FMNIST_MEAN, FMNIST_STD
        self.batch_size, self.seed = cfg.batch_size, cfg.seed
        self.augment = BatchAugment(cfg.aug, self.image_size, self.mean, self.std, cfg.crop_min_scale, cfg.jitter,
                                    cfg.erase_p).to(device)
        if len(images) < cfg.batch_size:
            raise DataError(f"only {len(images)} training images, fewer than one batch of {cfg.batch_size}")

    def __len__(self):
        return len(self.images) // self.batch_size  # drop_last: Split-BN needs full batches

    def epoch(self, epoch: int):
        g = _epoch_generator(self.seed, epoch)
        order = torch.randperm(len(self.images), generator=g)
        for b in range(len(self)):
            x = self.images[order[b * self.batch_size:(b + 1) * self.batch_size]].to(self.device)
            gd = g if self.device.type == "cpu" else None  # CUDA draws use the device's (checkpointed) RNG
            yield self.augment(x, gd), self.augment(x, gd)

    def _eval_batches(self, images, batch: int = 1024):
        mean = torch.tensor(self.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, -1, 1, 1)
        for i in range(0, len(images), batch):
            x = images[i:i + batch].to(self.device).float() / 255.0
            if x.shape[-1] != self.image_size:
                x = F.interpolate(x, size=self.image_size, mode="bilinear", antialias=True, align_corners=False)
            yield (x - mean) / std

    def knn_sets(self):
        """(memory-bank batches, bank labels, query batches, query labels), or None without labels."""
        return (lambda: self._eval_batches(self.images), self.labels,
                lambda: self._eval_batches(self.test_images), self.test_labels)


class FolderData:
    """An ImageFolder: DataLoader workers run the per-sample v2 pipeline twice per image."""

    def __init__(self, cfg, device, train_ds, val_ds):
        self.device = torch.device(device)
        self.image_size = cfg.image_size or 32
        self.in_channels, self.raw_shape = 3, None
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.batch_size, self.seed, self.workers = cfg.batch_size, cfg.seed, cfg.workers
        self.train_ds, self.val_ds = train_ds, val_ds
        view = view_transform(cfg.aug, self.image_size, 3, self.mean, self.std, cfg.crop_min_scale)
        self.pairs = TwoViews(train_ds, view)
        if len(train_ds) < cfg.batch_size:
            raise DataError(f"only {len(train_ds)} training images, fewer than one batch of {cfg.batch_size}")

    def __len__(self):
        return len(self.pairs) // self.batch_size

    def epoch(self, epoch: int):
        loader = torch.utils.data.DataLoader(
            self.pairs, batch_size=self.batch_size, shuffle=True, drop_last=True, num_workers=self.workers,
            generator=_epoch_generator(self.seed, epoch), pin_memory=self.device.type == "cuda",
            persistent_workers=False)
        for v1, v2 in loader:
            yield v1.to(self.device, non_blocking=True), v2.to(self.device, non_blocking=True)

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


def build_data(cfg, device):
    if is_fmnist_dir(cfg.data):
        images, labels = load_fmnist(cfg.data, train=True)
        test_images, test_labels = load_fmnist(cfg.data, train=False)
        if cfg.subset:
            images, labels = images[:cfg.subset], labels[:cfg.subset]
        return TensorData(cfg, device, images, labels, test_images, test_labels)
    train_ds = image_folder(cfg.data)
    if cfg.subset:
        train_ds.samples = train_ds.imgs = train_ds.samples[:cfg.subset]
        train_ds.targets = train_ds.targets[:cfg.subset]
    val_ds = image_folder(cfg.val) if cfg.val else None
    return FolderData(cfg, device, train_ds, val_ds)
