import gzip
import os
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import FMNIST_DIR, needs_fmnist, write_undecodable_png
from fastmoco.data import BatchAugment, DataError, image_folder, load_fmnist, view_transform
from fastmoco.data.fmnist import read_idx


def _write_idx(path, array_u8):
    dims = array_u8.shape
    header = bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array_u8.numpy().tobytes())


def test_idx_round_trip_and_truncation(tmp_path):
    data = torch.randint(0, 255, (3, 4, 5), dtype=torch.uint8)
    _write_idx(tmp_path / "a.gz", data)
    assert torch.equal(torch.from_numpy(read_idx(str(tmp_path / "a.gz")).copy()), data)
    with gzip.open(tmp_path / "a.gz", "rb") as fh:
        raw = fh.read()
    with gzip.open(tmp_path / "b.gz", "wb") as fh:
        fh.write(raw[:-7])
    with pytest.raises(DataError, match="truncated"):
        read_idx(str(tmp_path / "b.gz"))
    (tmp_path / "c.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(str(tmp_path / "c.gz"))


@needs_fmnist()
def test_fashion_mnist_loads():
    x, y = load_fmnist(FMNIST_DIR, train=False)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (10000,) and set(y.tolist()) == set(range(10))


def test_missing_data_path():
    with pytest.raises(DataError, match="does not exist"):
        load_fmnist("/nonexistent/fmnist")
    with pytest.raises(DataError, match="does not exist"):
        image_folder("/nonexistent/folder")


def _folder(tmp_path, n=4, corrupt=0):
    for c in ("cat", "dog"):
        os.makedirs(tmp_path / c, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (40, 30), (i * 40, 10, 200)).save(tmp_path / c / f"{i}.png")
        for i in range(corrupt):
            (tmp_path / c / f"bad{i}.png").write_bytes(b"\x89PNG not really")
    return tmp_path


def test_image_folder_skips_corrupt_files_with_a_count(tmp_path):
    _folder(tmp_path, n=3, corrupt=2)
    with pytest.warns(UserWarning, match="skipped 4 unreadable image"):
        ds = image_folder(str(tmp_path))
    assert len(ds) == 6 and len(ds.targets) == 6


def test_empty_or_all_corrupt_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        image_folder(str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    _folder(bad, n=0, corrupt=1)
    with pytest.raises(DataError, match="none of its 2 images"), pytest.warns(UserWarning):
        image_folder(str(bad))


@pytest.mark.parametrize("recipe", ["v1", "v2"])
@pytest.mark.parametrize("channels", [1, 3])
def test_batch_augment_shapes_and_independent_views(recipe, channels):
    aug = BatchAugment(recipe, 24, (0.5,) * channels, (0.25,) * channels, 0.3)
    x = torch.randint(0, 255, (16, channels, 28, 28), dtype=torch.uint8)
    v1, v2 = aug(x), aug(x)
    assert v1.shape == (16, channels, 24, 24) and v1.dtype == torch.float32
    assert torch.isfinite(v1).all() and not torch.equal(v1, v2)
    assert v1.min() >= -2.0 - 1e-5 and v1.max() <= 2.0 + 1e-5  # [0, 1] normalised by (0.5, 0.25)


def test_batch_augment_is_reproducible_with_a_generator():
    aug = BatchAugment("v2", 28, (0.5,), (0.25,))
    x = torch.randint(0, 255, (8, 1, 28, 28), dtype=torch.uint8)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("recipe", ["v1", "v2"])
def test_torchvision_v2_recipes(recipe):
    t = view_transform(recipe, 32, 3, (0.5,) * 3, (0.25,) * 3)
    out = t(Image.new("RGB", (50, 40), (100, 20, 30)))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32


def test_random_erasing_greys_one_rectangle_per_image():
    aug = BatchAugment("v1", 28, (0.0,), (1.0,), min_scale=1.0, jitter=0.0, erase_p=1.0)
    x = torch.zeros(32, 1, 28, 28, dtype=torch.uint8)  # black images: only the erased box is grey
    out = aug(x)
    grey = out[:, 0] == 0.5  # (B, H, W)
    for b in range(32):
        rows, cols = grey[b].any(1).nonzero(), grey[b].any(0).nonzero()
        assert len(rows) and len(cols)
        box = grey[b, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all()  # one solid rectangle
        assert 0.01 < grey[b].float().mean() < 0.25


def _folder_with_problem_files(root):
    """Five good images, a PNG whose pixel data does not inflate (passes the up-front check, fails to decode), a
    16-bit grey PNG, a palette PNG with transparency, an RGBA PNG, and a symlink loop."""
    import numpy as np
    from PIL import Image

    c = root / "c0"
    c.mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (20, 20), (40 * i, 0, 0)).save(c / f"good{i}.png")
    write_undecodable_png(c / "undecodable.png")
    Image.fromarray(np.full((20, 20), 65535 // 2, dtype=np.uint16)).save(c / "grey16.png")
    pal = Image.new("P", (20, 20), 1)
    pal.putpalette([0, 0, 0, 255, 128, 0] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(c / "palette.png", transparency=0)
    Image.new("RGBA", (20, 20), (0, 0, 255, 100)).save(c / "rgba.png")
    os.symlink("..", c / "loop")  # c0/loop -> root: the same files again under longer paths
    return c


def test_image_folder_dedupes_symlink_loops_and_converts_modes(tmp_path):
    from fastmoco.data.folder import load_rgb

    c = _folder_with_problem_files(tmp_path)
    ds = image_folder(str(tmp_path))
    assert len(ds) == 9  # every real file once (the undecodable PNG passes the up-front check)
    grey = load_rgb(str(c / "grey16.png"))
    assert grey.mode == "RGB" and grey.getpixel((3, 3)) == (127, 127, 127)  # 32767 / 65535 * 255, not clipped
    assert load_rgb(str(c / "palette.png")).getpixel((0, 0)) == (255, 128, 0)
    assert load_rgb(str(c / "rgba.png")).getpixel((0, 0)) == (0, 0, 255)


def test_undecodable_images_during_the_run_are_replaced_and_counted(tmp_path):
    from fastmoco.data import FolderData
    from fastmoco.train import TrainConfig

    _folder_with_problem_files(tmp_path / "train")
    cfg = TrainConfig(data=str(tmp_path / "train"), batch_size=9, bn_splits=1, workers=0, image_size=16).resolved()
    data = FolderData(cfg, "cpu", image_folder(cfg.data), None)
    with pytest.warns(UserWarning, match=r"1 image\(s\) could not be decoded in epoch 1 and were replaced"):
        batches = list(data.epoch(0))
    (v1, v2), = batches
    assert v1.shape == v2.shape == (9, 3, 16, 16) and torch.isfinite(v1).all()


def test_v3_views_are_asymmetric_blur_and_solarize():
    from torchvision.transforms import v2 as T

    from fastmoco.data.view_params import ViewSpec, draw

    x = torch.full((2000, 1, 8, 8), 230, dtype=torch.uint8)  # bright and flat: solarized -> dark, blur changes nothing
    g = torch.Generator().manual_seed(0)
    kw = dict(min_scale=1.0, jitter=0.0)
    mean, std = (0.0,), (1.0,)
    v1 = BatchAugment("v3", 8, mean, std, view=0, **kw)(x, g)
    v2 = BatchAugment("v3", 8, mean, std, view=1, **kw)(x, torch.Generator().manual_seed(0))
    dark = (v2.mean(dim=(1, 2, 3)) < 0.5).float().mean().item()
    assert (v1 < 0.5).sum() == 0 and 0.17 < dark < 0.23  # solarize p=0.2 on view 2 only
    assert (BatchAugment("v3", 8, mean, std).blur_p, BatchAugment("v3", 8, mean, std, view=1).blur_p) == (1.0, 0.1)
    for recipe in ("v1", "v2"):  # the second view of the queue recipes is the first one's, draw for draw
        a = BatchAugment(recipe, 8, mean, std)(x[:64], torch.Generator().manual_seed(3))
        b = BatchAugment(recipe, 8, mean, std, view=1)(x[:64], torch.Generator().manual_seed(3))
        assert torch.equal(a, b)
    per_sample = [view_transform("v3", 16, 3, (0.5,) * 3, (0.25,) * 3, view=v) for v in (0, 1)]
    assert [any(isinstance(t, T.RandomSolarize) for t in p.transforms) for p in per_sample] == [False, True]
    hw = np.array([[32, 32]] * 4000)
    specs = [ViewSpec("v3", 16, 3, (0.5,) * 3, (0.25,) * 3, 0.2, 0.4, 0.1, 0.0, view=v) for v in (0, 1)]
    d1, d2 = (draw(np.random.default_rng(0), hw, s) for s in specs)
    assert "solarize" not in d1 and 0.18 < d2["solarize"].mean() < 0.22
    assert d1["blur"].all() and 0.08 < d2["blur"].mean() < 0.12
    v2spec = ViewSpec("v2", 16, 3, (0.5,) * 3, (0.25,) * 3, 0.2, 0.4, 0.1, 0.0, view=1)
    assert "solarize" not in draw(np.random.default_rng(0), hw, v2spec)
