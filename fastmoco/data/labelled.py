"""Labelled images for evaluating a frozen backbone (the linear protocol): Fashion-MNIST's train/test split, or an
ImageFolder for training with a second one (``val``) for evaluation."""
import torch

from .errors import DataError
from .fmnist import is_fmnist_dir, load_fmnist
from .folder import image_folder


class TensorImages(torch.utils.data.Dataset):
    """(uint8 image tensor (C, H, W), label) pairs from in-memory arrays, with a per-sample transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None):
        self.images, self.targets, self.transform = images, labels.tolist(), transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i]
        return (self.transform(x) if self.transform else x), self.targets[i]


def labelled_sets(data: str, val: str | None, subset: int = 0):
    """(train set, evaluation set, number of classes); each set has ``.transform`` and ``.targets``."""
    if is_fmnist_dir(data):
        x, y = load_fmnist(data, train=True)
        train = TensorImages(x[:subset] if subset else x, y[:subset] if subset else y)
        if val:
            test = image_folder(val)
        else:
            xt, yt = load_fmnist(data, train=False)
            test = TensorImages(xt, yt)
    else:
        if not val:
            raise DataError(f"{data} is an ImageFolder: pass --val DIR, a labelled folder to evaluate on")
        train, test = image_folder(data), image_folder(val)
        if subset:
            train.samples = train.imgs = train.samples[:subset]
            train.targets = train.targets[:subset]
    classes = max(max(train.targets), max(test.targets)) + 1
    return train, test, classes
