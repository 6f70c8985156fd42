"""In-memory uint8 images (the embedded Fashion-MNIST): batched tensor augmentation in the training process, or
DALI fed from memory."""
import torch
import torch.nn.functional as F

from . import dali
from .plan import EpochPlan, batch_seed
from .transforms import FMNIST_MEAN, FMNIST_STD, BatchAugment


class TensorData(EpochPlan):
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
            self.dali = dali.epochs_for(cfg, self.device, self.image_size, self.small_size, self.in_channels, self.mean,
                                     self.std, cfg.jitter, 0.0, cfg.erase_p)
            self.host_hwc = images.permute(0, 2, 3, 1).contiguous().numpy()  # (N, 28, 28, 1) uint8, DALI's layout

    def epoch(self, epoch: int, skip: int = 0):
        """This rank's micro-batches of two views (and the small views), from sample ``skip`` of the epoch on."""
        if self.loader == "dali":
            plan = list(self.plan(epoch, skip))
            yield from self.dali.memory(self.host_hwc, [idx.numpy() for _, idx in plan],
                                        [batch_seed(self.seed, epoch, start) for start, _ in plan])
            return
        for start, idx in self.plan(epoch, skip, self.images.device):
            x = self.images[idx]  # (B, 1, 28, 28) uint8, on the images' device
            g = torch.Generator(self.device).manual_seed(batch_seed(self.seed, epoch, start))
            views = (self.augments[0](x, g), self.augments[1](x, g))
            if self.small_crops:
                views += (torch.cat([self.small_augment(x, g) for _ in range(self.small_crops)]),)  # (S*B, C, s, s)
            yield views

    def _eval_batches(self, images, labels, batch: int = 1024):
        """(normalised images (b, C, H, W), labels (b,)) in batches, at the training size."""
        mean = torch.tensor(self.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, -1, 1, 1)
        for i in range(0, len(images), batch):
            x = images[i:i + batch].to(self.device).float() / 255.0  # (b, C, H, W)
            if x.shape[-1] != self.image_size:
                x = F.interpolate(x, size=self.image_size, mode="bilinear", antialias=True, align_corners=False)
            yield (x - mean) / std, labels[i:i + batch]

    def knn_sets(self):
        """(memory-bank batches, query batches): callables yielding (images, labels), or None without labels."""
        return (lambda: self._eval_batches(self.images, self.labels),
                lambda: self._eval_batches(self.test_images, self.test_labels))
