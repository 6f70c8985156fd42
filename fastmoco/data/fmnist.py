"""Fashion-MNIST from its gzipped IDX files (Debian package ``dataset-fashion-mnist``)."""
import gzip
import os

import numpy as np
import torch

from fastmoco.errors import DataError

FILES = {
    True: ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    False: ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def is_fmnist_dir(root: str) -> bool:
    return all(os.path.isfile(os.path.join(root, f)) for f in FILES[True])


def read_idx(path: str) -> np.ndarray:
    """One IDX file (gzipped or not) as a uint8 array; the header's magic number and sizes are checked."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {dims}, found {data.size} bytes of data")
    return data.reshape(dims)


def load_fmnist(root: str, train: bool = True):
    """Returns (images uint8 (N, 1, 28, 28), labels int64 (N,))."""
    if not os.path.isdir(root):
        raise DataError(f"data path does not exist: {root} (apt-get install dataset-fashion-mnist)")
    img_file, lbl_file = (os.path.join(root, f) for f in FILES[train])
    for f in (img_file, lbl_file):
        if not os.path.isfile(f):
            raise DataError(f"Fashion-MNIST file missing: {f}")
    images = torch.from_numpy(read_idx(img_file).copy()).unsqueeze(1)  # (N, 1, 28, 28)
    labels = torch.from_numpy(read_idx(lbl_file).astype(np.int64))  # (N,)
    if images.shape[0] != labels.shape[0] or images.shape[0] == 0:
        raise DataError(f"{root}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels
