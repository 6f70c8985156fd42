"""Training data as the loop consumes it: two augmented views per image, plus labelled sets for the kNN monitor.
With multi-crop (``cfg.small_crops``) each micro-batch also carries S low-resolution views of every image, as
one (S*B, C, s, s) batch, crop-major, drawn after the two views (so those do not change).

``build_data(cfg, device)`` picks the source from ``cfg.data``: a folder holding Fashion-MNIST's IDX files (the
embedded default) is loaded into memory; a shard manifest (or its folder, or a brace pattern of .tar files) is
sharded data; any other folder is an ImageFolder. ``cfg.loader`` picks who makes the
two views: "dali" (``dali.py``: decode once, augment twice, on the GPU when training there) or "torch" (in-memory
data: batched tensor augmentation, ``BatchAugment``; folders: DataLoader workers running per-sample
torchvision.transforms.v2). Every epoch's order comes from (seed, epoch), the same for both loaders, and every
micro-batch's augmentation draws from its position in that order, so a run resumed anywhere, even mid-epoch or
with another process count (shards: with the same count, as their split over processes depends on it), sees the
same batches as the uninterrupted run. Under torchrun each process takes its own slice of every step.

Modules: ``plan`` (the epoch plan: ``EpochPlan`` over sample indices, ``ShardPlan`` over shards), ``memory``
(in-memory data), ``folder`` / ``folder_source`` (reading an ImageFolder / training from one), ``shards`` /
``shard_source`` (WebDataset shards: manifest, reader, converter / training from them), ``dali`` +
``transforms`` (who makes the views), ``build`` (which source a config names), ``labelled`` (evaluation sets).
"""
from . import dali
from .build import LOADERS, build_data, choose_loader
from fastmoco.errors import DataError
from .fmnist import load_fmnist
from .folder import image_folder
from .folder_source import FolderData
from .memory import TensorData
from .plan import EpochPlan, batch_seed
from .transforms import BatchAugment, view_transform

__all__ = ["LOADERS", "BatchAugment", "DataError", "EpochPlan", "FolderData", "TensorData", "batch_seed", "build_data",
           "choose_loader", "dali", "image_folder", "load_fmnist", "view_transform"]
