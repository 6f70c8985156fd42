"""Any ImageFolder (root/class_x/img.png): verified once, corrupt files skipped with one warning and a count."""
import os
import warnings

import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from .errors import DataError


def _readable(path: str) -> bool:
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # noqa: BLE001 - PIL raises many types for broken files
        return False


def image_folder(root: str, transform=None) -> ImageFolder:
    if not os.path.isdir(root):
        raise DataError(f"data path does not exist: {root}")
    try:
        ds = ImageFolder(root, transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:  # no class folders / no images
        raise DataError(f"{root} holds no images in class sub-folders ({str(exc).splitlines()[0]})") from None
    good = [s for s in ds.samples if _readable(s[0])]
    skipped = len(ds.samples) - len(good)
    if skipped:
        warnings.warn(f"{root}: skipped {skipped} unreadable image(s) of {len(ds.samples)}", stacklevel=2)
    if not good:
        raise DataError(f"{root}: none of its {len(ds.samples)} images could be read")
    ds.samples = ds.imgs = good
    ds.targets = [t for _, t in good]
    return ds


class TwoViews(torch.utils.data.Dataset):
    """Wraps an ImageFolder: item = (view 1, view 2), two independent draws of ``transform``."""

    def __init__(self, ds: ImageFolder, transform):
        self.ds, self.transform = ds, transform

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, item):
        """``item``: an index, or (index, seed) to draw both views from torch's RNG seeded with ``seed``."""
        i, seed = item if isinstance(item, tuple) else (item, None)
        img = self.ds.loader(self.ds.samples[i][0])
        if seed is None:
            return self.transform(img), self.transform(img)
        with torch.random.fork_rng(devices=[]):  # the caller's RNG stream is left as it was
            torch.manual_seed(seed)
            return self.transform(img), self.transform(img)
