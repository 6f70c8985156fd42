"""What the test modules share (imported by name; pytest's conftest.py keeps only the set-up and the fixtures):
the data's location, skip marks, the tolerance table, a corrupt-file writer, and the one tiny training config."""
import os

import pytest
import torch

from fastmoco.runs.config import FMNIST_DIR, TrainConfig  # one definition of where the default data lives

# (dtype, atol, rtol) against a float64 reference. Low-precision rows are loose because the *inputs* are rounded
# (the reference sees the rounded values too, so what is left is fp32-accumulated arithmetic on bf16/fp16 outputs).
DTYPE_TOLS = [
    (torch.float64, 1e-10, 1e-10),
    (torch.float32, 2e-5, 2e-5),
    (torch.float16, 5e-3, 5e-3),
    (torch.bfloat16, 3e-2, 3e-2),
]


def needs_fmnist():
    return pytest.mark.skipif(not os.path.isdir(FMNIST_DIR), reason="apt-get install dataset-fashion-mnist")


cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def write_undecodable_png(path, size=(20, 20)):
    """A PNG that passes every up-front check (header, chunk CRCs, IEND) but whose pixel data does not inflate:
    it fails only when decoded, in PIL and in DALI alike."""
    import io
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, format="PNG")
    data, out, at = buf.getvalue(), bytearray(buf.getvalue()[:8]), 8
    while at < len(data):
        (length,), kind = struct.unpack(">I", data[at:at + 4]), data[at + 4:at + 8]
        body = data[at + 8:at + 8 + length]
        if kind == b"IDAT":
            body = bytes(b ^ 0x5A for b in body)  # not a zlib stream any more; its CRC recomputed below
        out += struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        at += 12 + length
    with open(path, "wb") as fh:
        fh.write(bytes(out))


# The one tiny training config: CPU-sized (a width-4 resnet10 on 1,024 images, batch 32, one epoch: seconds per
# run). A test module states only what it changes, e.g. ``TINY = tiny(K=128)``.
BASE = dict(data=FMNIST_DIR, subset=1024, batch_size=32, width=4, epochs=1, progress=False, threads=2, knn_k=20)


def tiny(**changes) -> dict:
    """The tiny config's fields with ``changes``."""
    return {**BASE, **changes}


def resolved(settings: dict, out, **changes) -> TrainConfig:
    """``settings`` (a ``tiny(...)`` dict) writing to ``out``, with ``changes``, resolved as the CLI would."""
    return TrainConfig(**{**settings, "out": str(out), **changes}).resolved()
