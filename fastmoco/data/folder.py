"""Any ImageFolder (root/class_x/img.png): verified once, corrupt files skipped with one warning and a count;
files that fail only when decoded (truncated JPEGs pass the up-front check) are replaced during the run by the next
readable image and counted per epoch. Every image comes out RGB: 16-bit greys are scaled to 8 bits, palettes and
alpha channels resolved."""
import os
import warnings

import numpy as np
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from .errors import DataError

# what PIL raises for files it cannot decode (truncated data, unknown formats, broken headers)
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def load_rgb(path: str) -> Image.Image:
    """An image file as 8-bit RGB. PIL's own convert("RGB") clips 16-bit and 32-bit integer greys at 255 (a
    white image); here they are scaled down by their bit depth instead."""
    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.uint32 if im.mode == "I" else np.uint16).astype(np.float64)
            top = 65535.0 if im.mode != "I" or arr.max() <= 65535 else float(arr.max())
            return Image.fromarray((arr * (255.0 / top)).round().astype(np.uint8), "L").convert("RGB")
        if im.mode == "P" and "transparency" in im.info:
            return im.convert("RGBA").convert("RGB")
        return im.convert("RGB")


def _size(path: str):
    """(height, width) of a readable image file (read from its header, then verified), or None."""
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()
        return size[1], size[0]
    except Exception:  # noqa: BLE001 - PIL raises many types for broken files
        return None


def image_folder(root: str, transform=None) -> ImageFolder:
    if not os.path.isdir(root):
        raise DataError(f"data path does not exist: {root}")
    try:
        ds = ImageFolder(root, transform=transform, loader=load_rgb)
    except (FileNotFoundError, RuntimeError) as exc:  # no class folders / no images
        raise DataError(f"{root} holds no images in class sub-folders ({str(exc).splitlines()[0]})") from None
    seen, unique = set(), []
    for path, target in ds.samples:  # a symlink loop lists the same files again under longer paths
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            unique.append((path, target))
    ds.samples = unique
    ds.image_sizes = {}  # path -> (height, width): the DALI loader draws its crop boxes in pixels
    for path, _ in ds.samples:
        size = _size(path)
        if size is not None:
            ds.image_sizes[path] = size
    good = [s for s in ds.samples if s[0] in ds.image_sizes]
    skipped = len(ds.samples) - len(good)
    if skipped:
        warnings.warn(f"{root}: skipped {skipped} unreadable image(s) of {len(ds.samples)}", stacklevel=2)
    if not good:
        raise DataError(f"{root}: none of its {len(ds.samples)} images could be read")
    ds.samples = ds.imgs = good
    ds.targets = [t for _, t in good]
    return ds


class TwoViews(torch.utils.data.Dataset):
    """Wraps an ImageFolder: item = (view 1, view 2), two independent draws of ``transform``, then (multi-crop)
    ``small_crops`` draws of ``small`` stacked as (S, C, s, s)."""

    def __init__(self, ds: ImageFolder, transform, small=None, small_crops: int = 0):
        self.ds, self.transform, self.small, self.small_crops = ds, transform, small, small_crops

    def __len__(self):
        return len(self.ds)

    def _load(self, i: int):
        """The image at i, or the next readable one after it; returns (image, unreadable files passed over)."""
        n = len(self.ds.samples)
        for skipped in range(n):
            try:
                return self.ds.loader(self.ds.samples[(i + skipped) % n][0]), skipped
            except DECODE_ERRORS:
                continue
        raise DataError(f"{self.ds.root}: none of its {n} images could be decoded")

    def __getitem__(self, item):
        """``item``: an index, or (index, seed) to draw both views from torch's RNG seeded with ``seed``.
        Returns (view 1, view 2, [small views,] number of undecodable files replaced)."""
        i, seed = item if isinstance(item, tuple) else (item, None)
        img, skipped = self._load(i)
        with torch.random.fork_rng(devices=[], enabled=seed is not None):  # the caller's RNG stream stays as it was
            if seed is not None:
                torch.manual_seed(seed)
            views = (self.transform(img), self.transform(img))
            if self.small_crops:  # drawn after both views: those stay as they are without multi-crop
                views += (torch.stack([self.small(img) for _ in range(self.small_crops)]),)  # (S, C, s, s)
            return (*views, skipped)
