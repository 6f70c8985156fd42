"""Data that is not what it claims, for both loaders: relative and odd paths, file names DALI cannot list, truncated
JPEGs, EXIF orientation, evaluation classes matched by name, and the per-epoch count of replaced images reaching
the user through the training loop."""
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from helpers import FMNIST_DIR, needs_fmnist, write_undecodable_png
from fastmoco.data import DataError, build_data
from fastmoco.data.folder import _size, jpeg_is_complete, load_rgb
from fastmoco.data.labelled import labelled_sets
from fastmoco.train import TrainConfig

LOADERS = ["dali", "torch"]


pytestmark = pytest.mark.usefixtures("no_hang")  # a DALI pipeline that stops must raise, never hang


def _cfg(root, loader, **kw):
    kw = {"batch_size": 4, "bn_splits": 1, "workers": 1, "image_size": 16, "preset": "v2", **kw}
    return TrainConfig(data=str(root), loader=loader, **kw).resolved()


def _images(folder, n=4, names=None, size=(24, 20)):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names or [f"{i}.png" for i in range(n)]):
        Image.new("RGB", size, (30 * i, 100, 50)).save(folder / name)


def _one_epoch(data):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(data.epoch(0))
    return batches, [str(w.message) for w in caught]


@pytest.mark.parametrize("loader", LOADERS)
def test_a_relative_data_path_with_spaces_and_non_ascii_names_trains(tmp_path, monkeypatch, loader):
    root = tmp_path / "my data" / "ünï çødé"
    _images(root / "class a", names=["a b.png", "ü#1.png", "quote'd.png", "x.png"])
    _images(root / "clâss b", names=["y.png", "z z.png", "ä.png", "w.png"])
    monkeypatch.chdir(tmp_path)
    data = build_data(_cfg(os.path.join("my data", "ünï çødé"), loader), "cpu")  # relative --data
    batches, messages = _one_epoch(data)
    assert len(batches) == 2 and all(v.shape == (4, 3, 16, 16) for b in batches for v in b)
    assert not [m for m in messages if "could not be decoded" in m]


def test_a_file_name_with_a_line_break_stops_dali_before_training_and_the_torch_loader_reads_it(tmp_path):
    _images(tmp_path / "c0", names=["ok0.png", "ok1.png", "two\nlines.png", "ok2.png"])
    with pytest.raises(DataError, match=r"DALI cannot read a file whose name holds a line break: .*two\\nlines.png"
                                        r".*--loader torch"):
        build_data(_cfg(tmp_path, "dali"), "cpu")
    batches, _ = _one_epoch(build_data(_cfg(tmp_path, "torch"), "cpu"))
    assert len(batches) == 1


def _jpeg_bytes(seed=0, hw=(64, 64)):
    import io
    noise = np.random.default_rng(seed).integers(0, 255, (*hw, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_jpeg_completeness_from_its_tail(tmp_path):
    data = _jpeg_bytes()
    cases = {"whole": data, "appended": data + b"\xff\xda motion-photo bytes \x00" * 50}
    cases.update({f"cut at {f}": data[:int(len(data) * f)] for f in (0.3, 0.6, 0.9, 0.999)})
    for name, blob in cases.items():
        (tmp_path / "x.jpg").write_bytes(blob)
        assert jpeg_is_complete(str(tmp_path / "x.jpg")) == (name == "whole"), name
    # a complete file that fails the tail test (data appended after its image) is decoded in full and kept
    (tmp_path / "x.jpg").write_bytes(cases["appended"])
    assert _size(str(tmp_path / "x.jpg")) == (64, 64)


@pytest.mark.parametrize("loader", LOADERS)
def test_a_truncated_jpeg_is_skipped_up_front_by_both_loaders(tmp_path, loader):
    _images(tmp_path / "c0", n=4)
    data = _jpeg_bytes()
    (tmp_path / "c0" / "cut.jpg").write_bytes(data[: int(len(data) * 0.95)])  # DALI would decode it partly
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\) of 5"):
        src = build_data(_cfg(tmp_path, loader), "cpu")
    assert all(not p.endswith("cut.jpg") for p, _ in src.train_ds.samples)
    batches, messages = _one_epoch(src)
    assert len(batches) == 1 and not [m for m in messages if "could not be decoded" in m]


def _turned_jpeg(path):
    """A 40x20 JPEG, white on the left and black on the right, tagged EXIF orientation 6 (shown turned 90 degrees
    clockwise): upright it is 20 wide and 40 tall, white on top. Greys keep their order through every colour
    augmentation (brightness, contrast, saturation, hue, greying)."""
    a = np.zeros((20, 40, 3), dtype=np.uint8)
    a[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(path, quality=95, exif=exif.tobytes())


def test_exif_orientation_is_applied_when_reading_and_sizing(tmp_path):
    _turned_jpeg(tmp_path / "t.jpg")
    im = load_rgb(str(tmp_path / "t.jpg"))
    assert im.size == (20, 40)
    assert min(im.getpixel((10, 2))) > 200 and max(im.getpixel((10, 37))) < 50  # white on top, black below
    assert _size(str(tmp_path / "t.jpg")) == (40, 20)  # (height, width) as shown: DALI's crop boxes use it


@pytest.mark.parametrize("loader", LOADERS)
def test_both_loaders_train_on_the_upright_image(tmp_path, loader):
    (tmp_path / "c0").mkdir()
    for i in range(4):
        _turned_jpeg(tmp_path / "c0" / f"{i}.jpg")
    batches, _ = _one_epoch(build_data(_cfg(tmp_path, loader, crop_min_scale=1.0), "cpu"))
    for view in batches[0]:  # (4, 3, 16, 16): whatever the jitter, the top rows stay brighter than the bottom
        assert (view[:, :, :5].mean((1, 2, 3)) > view[:, :, -5:].mean((1, 2, 3)) + 0.5).all(), loader


def _classes(root, names, n=2):
    for c in names:
        _images(root / c, n=n)
    return root


def test_val_classes_are_matched_by_name_and_foreign_ones_refused(tmp_path):
    train = _classes(tmp_path / "train", ["a", "b", "c"])
    bad = _classes(tmp_path / "bad", ["a", "c", "d", "e"])
    with pytest.raises(DataError, match=r"--val .*bad has classes the training data .*train lacks: d, e \(its "
                                        r"classes: a, b, c\)"):
        build_data(_cfg(train, "torch", val=str(bad)), "cpu")
    with pytest.raises(DataError, match="lacks: d, e"):
        labelled_sets(str(train), str(bad))
    part = _classes(tmp_path / "part", ["c", "a"])  # listed as a, c: positions 0, 1 there, 0, 2 in training
    data = build_data(_cfg(train, "torch", val=str(part)), "cpu")
    assert sorted(set(data.val_ds.targets)) == [0, 2]
    assert data.notice.endswith("holds 2 of the 3 training classes; evaluated on those (absent: b)")
    *_, note = labelled_sets(str(train), str(part))
    assert "absent: b" in note


@needs_fmnist()
def test_a_folder_scored_against_fashion_mnist_names_classes_by_number_or_name(tmp_path):
    val = _classes(tmp_path / "val", ["9", "Trouser", "T-shirt_top"])
    _, test, classes, note = labelled_sets(FMNIST_DIR, str(val))
    by_name = {os.path.basename(os.path.dirname(p)): t for p, t in test.samples}
    assert by_name == {"9": 9, "Trouser": 1, "T-shirt_top": 0} and classes == 10 and "3 of the 10" in note
    with pytest.raises(DataError, match="lacks: Cat"):
        labelled_sets(FMNIST_DIR, str(_classes(tmp_path / "cats", ["Cat"])))


@pytest.mark.slow
def test_images_replaced_during_an_epoch_are_reported_by_the_training_loop(tmp_path):
    from fastmoco.train import train

    _images(tmp_path / "data" / "c0", n=7, size=(32, 32))
    write_undecodable_png(tmp_path / "data" / "c0" / "undecodable.png")
    cfg = TrainConfig(data=str(tmp_path / "data"), loader="torch", batch_size=8, bn_splits=1, workers=0,
                      image_size=32, width=4, K=16, epochs=1, progress=False, out=str(tmp_path / "run")).resolved()
    with pytest.warns(UserWarning, match=r"1 image\(s\) could not be decoded in epoch 1 and were replaced"):
        train(cfg, log=lambda *_: None)


@needs_fmnist()
def test_a_val_folder_beside_fashion_mnist_training_is_refused_not_ignored(tmp_path):
    _classes(tmp_path / "val", ["0", "1"])
    with pytest.raises(DataError, match=r"^--val .*: training on Fashion-MNIST, the kNN monitor uses its own test set"):
        build_data(TrainConfig(data=FMNIST_DIR, val=str(tmp_path / "val")).resolved(), "cpu")
