"""The DALI loader (CPU mode here): views, order, sharding, resume, reproducibility, bad files, colour modes."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import write_undecodable_png
from fastmoco.data import FolderData, TensorData, build_data, choose_loader, dali, image_folder
from fastmoco.errors import DataError
from fastmoco.data.transforms import FMNIST_MEAN, FMNIST_STD, IMAGENET_MEAN, IMAGENET_STD
from fastmoco.train import TrainConfig
from fastmoco.runs.config import ConfigError

LEVELS = [8 + 10 * i for i in range(24)]  # one grey level per image: identifies the source of any view


pytestmark = pytest.mark.usefixtures("no_hang")  # a DALI pipeline that stops must raise, never hang


def _level_folder(root, n=24, size=(40, 30)):
    """n solid grey images (R=G=B): crops, flips, greying and blur keep the level, so a view names its source."""
    for i in range(n):
        d = root / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (LEVELS[i],) * 3).save(d / f"{i:02d}.png")
    return root


def _textured_folder(root, n=8):
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)  # smooth texture once upsampled
        Image.fromarray(small).resize((48, 36), Image.BILINEAR).save(d / f"{i}.jpg", quality=95)
    return root


def _cfg(root, **kw):
    kw = {"batch_size": 4, "bn_splits": 1, "workers": 1, "image_size": 16, "preset": "v2", "loader": "dali", **kw}
    return TrainConfig(data=str(root), **kw).resolved()


def _identity_views(data):
    """Switch the colour jitter off (strength 0), keeping crop, flip, greying and blur: levels pass unchanged."""
    data.dali.specs = [dali.ViewSpec(s.recipe, s.size, 3, IMAGENET_MEAN, IMAGENET_STD, s.min_scale, 0.0, 0.0, 0.0,
                                     s.max_scale) for s in data.dali.specs]
    return data


def _levels_seen(v):
    """The source index of each row of a view (B, 3, H, W) of a level folder."""
    pixel = v[:, 0].mean(dim=(1, 2)) * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # back to [0, 1]
    return [LEVELS.index(int(round(float(p) * 255))) for p in pixel]


def _index_of_path(data):
    return {path: i for i, (path, _) in enumerate(data.train_ds.samples)}


def _order(data, epoch=0, skip=0):
    """The dataset indices the views of this rank's epoch came from, batch by batch."""
    by_level = {int(os.path.basename(p)[:2]): i for p, i in _index_of_path(data).items()}
    rows = []
    for v1, v2 in data.epoch(epoch, skip):
        a, b = _levels_seen(v1), _levels_seen(v2)
        assert a == b  # the two views of a row come from the same image
        rows.append([by_level[x] for x in a])
    return rows


def _planned(data, epoch=0, skip=0):
    return [[int(i) for i in idx] for _, idx in data.plan(epoch, skip)]


def test_views_shape_dtype_range_and_layout(tmp_path):
    data = build_data(_cfg(_textured_folder(tmp_path)), "cpu")
    assert data.loader == "dali"
    (v1, v2), = list(data.epoch(0))[:1]
    lo = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    hi = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    for v in (v1, v2):
        assert v.shape == (4, 3, 16, 16) and v.dtype == torch.float32
        assert v.is_contiguous(memory_format=torch.channels_last)
        assert lo - 1e-4 <= float(v.min()) and float(v.max()) <= hi + 1e-4
        assert float(v.std()) > 0.1
    assert all(not torch.equal(v1[i], v2[i]) for i in range(4))  # two independent draws per image


def test_plan_order_same_source_for_both_views_and_resume(tmp_path):
    data = _identity_views(build_data(_cfg(_level_folder(tmp_path)), "cpu"))
    assert _order(data, 0) == _planned(data, 0)
    assert _order(data, 1) == _planned(data, 1) != _planned(data, 0)  # reshuffled each epoch
    step = data.samples_per_step
    assert _order(data, 1, skip=2 * step) == _planned(data, 1)[2:]  # a resumed run continues the same order


def test_rank_sharding_covers_every_file_once_and_drops_the_partial_step(tmp_path):
    _level_folder(tmp_path, n=22)  # 22 = 2 full steps of 2 x 4 + 6 left over
    cfg = _cfg(tmp_path)
    seen = []
    for rank in range(2):
        data = FolderData(cfg, "cpu", image_folder(cfg.data), None, rank=rank, world=2, loader="dali")
        rows = _order(_identity_views(data))
        assert len(rows) == len(data) == 2
        seen += [i for row in rows for i in row]
    assert len(seen) == len(set(seen)) == 16


def test_fixed_seed_reproduces_the_batches_wherever_a_run_resumes(tmp_path):
    _textured_folder(tmp_path)
    first = list(build_data(_cfg(tmp_path), "cpu").epoch(0))
    again = list(build_data(_cfg(tmp_path), "cpu").epoch(0))
    other = list(build_data(_cfg(tmp_path, seed=1), "cpu").epoch(0))
    for (a1, a2), (b1, b2) in zip(first, again):
        assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(first[0][0], other[0][0])
    data = build_data(_cfg(tmp_path), "cpu")
    (r1, r2), = list(data.epoch(0, skip=data.samples_per_step))  # resumed after the first step
    assert torch.equal(r1, first[1][0]) and torch.equal(r2, first[1][1])


@pytest.mark.parametrize("hw", [(300, 500), (40, 30), (1, 100), (100, 1), (28, 28)])
def test_crop_boxes_follow_torchvision_rules(hw):
    from fastmoco.data.view_params import crop_boxes

    rng = np.random.default_rng(0)
    sizes = np.array([hw] * 2000)
    top, left, h, w = crop_boxes(rng, sizes, 0.2).T
    H, W = hw
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= H).all() and (left + w <= W).all()
    assert (h >= 1).all() and (w >= 1).all()
    if min(hw) >= 28:  # an attempt fits: area and aspect in the drawn ranges (up to rounding to whole pixels)
        area = h * w / (H * W)
        assert area.min() > 0.2 * 0.9 and area.max() <= 1.0
        assert (w / h).min() > 0.75 * 0.9 and (w / h).max() < 4 / 3 * 1.1
        assert area.std() > 0.1  # really random
    else:  # nothing fits: the centred crop at the nearest allowed aspect
        assert len(set(map(tuple, np.stack([top, left, h, w], 1)))) == 1


def test_bad_files_are_skipped_or_replaced_with_counts_and_modes_become_rgb(tmp_path):
    c = tmp_path / "c0"
    c.mkdir()
    for i in range(4):
        Image.new("RGB", (20, 20), (40 * i, 0, 0)).save(c / f"good{i}.png")
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(c / "full.jpg", quality=95)
    write_undecodable_png(c / "undecodable.png")  # passes the up-front check, fails to decode
    (c / "zero.jpg").write_bytes(b"")
    (c / "text.png").write_text("not an image")
    (c / "notes.txt").write_text("ignored: not an image extension")
    Image.new("L", (20, 20), 90).save(c / "grey.png")
    Image.fromarray(np.full((20, 20), 30000, dtype=np.uint16)).save(c / "grey16.png")
    Image.new("RGBA", (20, 20), (0, 0, 255, 100)).save(c / "rgba.png")
    Image.new("LA", (20, 20), (70, 200)).save(c / "grey_alpha.png")
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image\(s\) of 12"):
        src = build_data(_cfg(tmp_path, batch_size=9), "cpu")
    with pytest.warns(UserWarning, match=r"1 image\(s\) could not be decoded in epoch 1 and were replaced"):
        (v1, v2), = list(src.epoch(0))
    assert v1.shape == v2.shape == (9, 3, 16, 16) and torch.isfinite(v1).all()
    assert str(c / "undecodable.png") in src.undecodable
    with pytest.warns(UserWarning, match=r"1 image\(s\) could not be decoded in epoch 2"):
        assert len(list(src.epoch(1))) == 1  # replaced up front from now on, still counted


def test_in_memory_images_through_external_source(tmp_path):
    images = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8)
    cfg = _cfg(tmp_path, preset="fmnist", batch_size=8)  # v2 + random erasing: every conditional branch runs
    data = TensorData(cfg, "cpu", images, torch.zeros(40), images[:8], torch.zeros(8), loader="dali")
    batches = list(data.epoch(0))
    assert len(batches) == 40 // 8
    lo, hi = (0 - FMNIST_MEAN[0]) / FMNIST_STD[0], (1 - FMNIST_MEAN[0]) / FMNIST_STD[0]
    for v1, v2 in batches:
        assert v1.shape == v2.shape == (8, 1, 16, 16) and v1.dtype == torch.float32
        assert lo - 1e-4 <= float(v1.min()) and float(v1.max()) <= hi + 1e-4
        assert not torch.equal(v1, v2)
    again = list(TensorData(cfg, "cpu", images, torch.zeros(40), images[:8], torch.zeros(8), loader="dali").epoch(0))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    assert len(list(data.epoch(0, skip=3 * 8))) == 2


def test_loader_choice_and_its_errors(monkeypatch):
    assert choose_loader("torch", False) == ("torch", None)
    assert choose_loader(None, False) == ("dali", None)
    assert choose_loader(None, True)[0] in ("dali", "torch")
    with pytest.raises(ConfigError, match="unknown loader 'nvidia'"):
        TrainConfig(loader="nvidia").resolved()
    monkeypatch.setattr(dali, "available", lambda: False)
    loader, notice = choose_loader(None, False)
    assert loader == "torch" and "DALI is not installed" in notice and "\n" not in notice
    with pytest.raises(DataError, match="--loader dali needs NVIDIA DALI"):
        choose_loader("dali", False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (nvJPEG decode, device='mixed')")
def test_gpu_decode_gives_views_on_the_device(tmp_path):
    data = _identity_views(build_data(_cfg(_level_folder(tmp_path)), "cuda"))
    rows = []
    for v1, v2 in data.epoch(0):
        assert v1.is_cuda and v1.is_contiguous(memory_format=torch.channels_last)
        rows.append([int(i) for i in _levels_seen(v1.cpu())])
    assert len(rows) == len(data)


@pytest.mark.parametrize("size,sigma", [(224, 1.7), (28, 0.6), (64, 2.0)])
def test_blur_kernels_are_torchvisions_gaussian(size, sigma):
    from torchvision.transforms.v2 import functional as TF

    from fastmoco.data.transforms import blur_kernel_size
    from fastmoco.data.view_params import gaussian_kernels

    taps = blur_kernel_size(size)
    k = torch.from_numpy(gaussian_kernels(np.array([sigma]), taps)[0]).double()
    delta = torch.zeros(1, 3 * taps, 3 * taps, dtype=torch.float64)
    delta[0, 3 * taps // 2, 3 * taps // 2] = 1.0
    blurred = TF.gaussian_blur(delta, [taps, taps], [sigma, sigma])[0]
    c, r = 3 * taps // 2, taps // 2
    torch.testing.assert_close(blurred[c - r:c + r + 1, c - r:c + r + 1], torch.outer(k, k), atol=1e-6, rtol=1e-5)


def test_views_are_the_drawn_crops_and_flips(tmp_path):
    """DALI's view equals torchvision's resized_crop + flip (+ greying) of the same image with the parameters
    view_params drew for that batch (jitter off): the crop box, its (y, x) order, the mirroring and the greying
    all reach the pipeline."""
    from torchvision.transforms.v2 import functional as TF

    from fastmoco.data.view_params import draw

    _textured_folder(tmp_path, n=4)
    data = _identity_views(build_data(_cfg(tmp_path, preset="v1", image_size=24), "cpu"))
    (v1, _), = list(data.epoch(0))[:1]
    files = [data.train_ds.samples[int(i)][0] for i in next(data.plan(0))[1]]
    hw = np.array([data.train_ds.image_sizes[f] for f in files])
    from fastmoco.data import batch_seed
    p = draw(np.random.default_rng(batch_seed(0, 0, 0)), hw, data.dali.specs[0])  # view 1's draws come first
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for i, f in enumerate(files):
        img = TF.pil_to_tensor(Image.open(f).convert("RGB"))
        (y0, x0), (y1, x1) = p["roi_start"][i] * hw[i], p["roi_end"][i] * hw[i]
        box = [int(round(y0)), int(round(min(x0, x1))), int(round(y1 - y0)), int(round(abs(x1 - x0)))]
        crop = TF.resized_crop(img, *box, [24, 24], antialias=True)
        if x1 < x0:
            crop = TF.horizontal_flip(crop)
        if p["saturation"][i] == 0:  # random greying (p=0.2) stays on with the jitter off
            crop = TF.rgb_to_grayscale(crop, num_output_channels=3)
        expect = (crop.float() / 255 - mean) / std
        assert (v1[i] - expect).abs().mean() < 0.08, (i, box)
        wrong = TF.horizontal_flip(expect) if box[3] > 2 else expect
        assert (v1[i] - wrong).abs().mean() > 2 * (v1[i] - expect).abs().mean()


@pytest.mark.parametrize("recipe,channels,erase_p", [("v2", 3, 0.0), ("v1", 3, 0.0), ("v2", 1, 0.5)])
def test_drawn_parameters_follow_the_recipe(recipe, channels, erase_p):
    from fastmoco.data.view_params import ViewSpec, draw

    B, s, hue = 20000, 0.4, 0.1
    spec = ViewSpec(recipe, 32, channels, (0.5,) * channels, (0.5,) * channels, 0.2, s, hue, erase_p)
    p = draw(np.random.default_rng(0), np.array([[48, 64]] * B), spec)
    flipped = p["roi_end"][:, 1] < p["roi_start"][:, 1]
    jittered = (p["brightness"] != 1) | (p["contrast"] != 1)
    assert abs(flipped.mean() - 0.5) < 0.02
    assert abs(jittered.mean() - (0.8 if recipe == "v2" else 1.0)) < 0.02
    assert p["brightness"].min() >= 1 - s and p["brightness"].max() <= 1 + s
    assert np.abs(p["hue"]).max() <= 360 * hue and (p["hue"][~jittered] == 0).all()
    if channels == 3:  # greying p=0.2, independent of the jitter
        assert abs((p["saturation"] == 0).mean() - 0.2) < 0.02
    assert abs(p["blur"].mean() - (0.5 if recipe == "v2" else 0.0)) < 0.02  # v1 has no blur
    assert abs(p["erase"].mean() - erase_p) < 0.02
    k = p["blur_kx"][:, 0]  # (B, taps): normalised, symmetric, peaked at the centre
    assert np.allclose(k.sum(1), 1, atol=1e-5) and np.allclose(k, k[:, ::-1], atol=1e-7)


def test_folder_small_views_follow_their_files_crop_major(tmp_path):
    _level_folder(tmp_path, n=16)
    data = _identity_views(build_data(_cfg(tmp_path, small_crops=2, small_crop_size=8), "cpu"))
    by_level = {int(os.path.basename(p)[:2]): i for p, i in _index_of_path(data).items()}
    for (v1, v2, small), planned in zip(data.epoch(0), _planned(data)):
        assert small.shape == (8, 3, 8, 8) and small.is_contiguous(memory_format=torch.channels_last)
        assert [by_level[x] for x in _levels_seen(small)] == planned * 2  # small view j of image i: row j*B + i
        assert _levels_seen(v1) == _levels_seen(v2) == _levels_seen(small[:4])
    torch_loader = build_data(_cfg(tmp_path, small_crops=2, small_crop_size=8, loader="torch"), "cpu")
    (v1, v2, small), again = next(iter(torch_loader.epoch(0))), next(iter(torch_loader.epoch(0)))
    assert v1.shape == v2.shape == (4, 3, 16, 16) and small.shape == (8, 3, 8, 8)
    assert all(torch.equal(a, b) for a, b in zip((v1, v2, small), again))  # seeded by position, as the views
