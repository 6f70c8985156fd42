"""Labelled images for evaluating a frozen backbone (kNN, the linear protocol): Fashion-MNIST's train/test split,
or an ImageFolder for training with a second one (``val``) for evaluation.

Labels are matched by class **name**, never by position: an evaluation folder's classes are relabelled with the
training set's indices (``align_classes``). A class the training set lacks cannot be predicted, so such a folder
is refused; one that covers only some training classes is evaluated on those, and the log says which are absent.
An ImageFolder scored against Fashion-MNIST names its classes by label number (0-9) or by Fashion-MNIST's class
names ("T-shirt/top" written T-shirt_top)."""
import torch

from fastmoco.errors import DataError
from .fmnist import CLASSES as FMNIST_CLASSES
from .fmnist import is_fmnist_dir, load_fmnist
from .folder import image_folder


class TensorImages(torch.utils.data.Dataset):
    """(uint8 image tensor (C, H, W), label) pairs from in-memory arrays, with a per-sample transform."""

    root = "Fashion-MNIST"
    classes = list(FMNIST_CLASSES)
    # the names an ImageFolder may give Fashion-MNIST's classes
    class_to_idx = {**{c: i for i, c in enumerate(FMNIST_CLASSES)}, **{str(i): i for i in range(10)},
                    **{c.replace("/", "_"): i for i, c in enumerate(FMNIST_CLASSES)}}

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None):
        self.images, self.targets, self.transform = images, labels.tolist(), transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i]
        return (self.transform(x) if self.transform else x), self.targets[i]


def labelled_set(path: str, subset: int = 0):
    """Labelled images at ``path``: an ImageFolder, or shards with classes (a manifest, its folder, a pattern);
    the first ``subset`` only when given."""
    from .shards import is_shards

    if is_shards(path):
        from .shard_source import ShardImages
        from .shards import resolve

        shards = resolve(path)
        return ShardImages(shards.first(subset) if subset else shards)
    ds = image_folder(path)
    if subset:
        ds.samples = ds.imgs = ds.samples[:subset]
        ds.targets = ds.targets[:subset]
    return ds


def align_classes(train, evaluation, flag: str = "--val") -> str | None:
    """Relabel ``evaluation`` (an ImageFolder or labelled shards) in place with ``train``'s class indices, matched
    by name. A class ``train`` lacks is a DataError; returns a note naming the training classes ``evaluation``
    lacks (or None)."""
    known = train.class_to_idx
    extra = [c for c in evaluation.classes if c not in known]
    if extra:
        raise DataError(f"{flag} {evaluation.root} has classes the training data {train.root} lacks: "
                        f"{_names(extra)} (its classes: {_names(train.classes)}); evaluation matches classes by name")
    if hasattr(evaluation, "relabel"):  # shards
        evaluation.relabel(known, flag)
    else:
        index = [known[c] for c in evaluation.classes]  # evaluation index -> training index
        evaluation.samples = evaluation.imgs = [(path, index[t]) for path, t in evaluation.samples]
        evaluation.targets = [t for _, t in evaluation.samples]
    present = {known[c] for c in evaluation.classes}
    absent = [c for c in train.classes if known[c] not in present]
    if not absent:
        return None
    return (f"{flag} {evaluation.root} holds {len(present)} of the {len(train.classes)} training classes; "
            f"evaluated on those (absent: {_names(absent)})")


def _names(classes: list, most: int = 5) -> str:
    shown = ", ".join(map(str, classes[:most]))
    return shown + (f" and {len(classes) - most} more" if len(classes) > most else "")


def labelled_sets(data: str, val: str | None, subset: int = 0):
    """(train set, evaluation set, number of classes, note); each set has ``.transform`` and ``.targets``; the
    evaluation set's labels are the training set's (by class name); ``note`` says what is evaluated when the
    evaluation set lacks some training classes, and which samples of labelled shards were left out (else None)."""
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
            raise DataError(f"{data} is an ImageFolder or shards: pass --val, labelled images to evaluate on")
        train, test = labelled_set(data, subset), labelled_set(val)
    notes = [getattr(train, "note", None), getattr(test, "note", None), align_classes(train, test) if val else None]
    note = "; ".join(n for n in notes if n) or None
    classes = max(max(train.targets), max(test.targets)) + 1
    return train, test, classes, note
