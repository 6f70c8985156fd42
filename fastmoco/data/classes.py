"""A class subset of labelled training data (``--classes``): the held-out-class protocol trains on some classes
and transfers to others, so the subset is named up front and everything else of the data is left out."""
from collections.abc import Sequence

import torch

from fastmoco.errors import DataError

from .fmnist import CLASSES


def select_classes(spec: str, names: Sequence[str], what: str) -> list[int]:
    """The class indices ``spec`` names: comma-separated class names or indices into ``names`` (sorted, each once);
    all of them when ``spec`` is empty. An unknown or repeated class is one line listing the known ones."""
    if not spec.strip():
        return list(range(len(names)))
    known = ", ".join(f"{i} {n}" for i, n in enumerate(names))
    chosen = []
    for token in (t.strip() for t in spec.split(",")):
        if token in names:
            index = list(names).index(token)
        elif token.isdigit() and int(token) < len(names):
            index = int(token)
        else:
            raise DataError(f"--classes: {token!r} is not a class of {what}; its classes are {known}")
        if index in chosen:
            raise DataError(f"--classes: {names[index]!r} is named twice in {spec!r}")
        chosen.append(index)
    return sorted(chosen)


def keep_classes(samples: list, targets: list, ids: list[int]) -> tuple[list, list]:
    """The (samples, targets) whose target is one of ``ids``."""
    wanted = set(ids)
    kept = [(s, t) for s, t in zip(samples, targets) if t in wanted]
    return [s for s, _ in kept], [t for _, t in kept]


def keep_fmnist_classes(spec: str, *sets: tuple) -> list[tuple]:
    """Each (images, labels) pair of ``sets`` (Fashion-MNIST tensors) with only the classes ``spec`` names."""
    ids = torch.tensor(select_classes(spec, CLASSES, "Fashion-MNIST"))
    out = []
    for images, labels in sets:
        keep = torch.isin(labels, ids)
        out.append((images[keep], labels[keep]))
    return out
