"""--classes: a class subset of Fashion-MNIST, of an ImageFolder and of the detection scenes (the held-out-class
protocol: pre-train on some classes, transfer to the others)."""
import json
import os

import pytest
import torch
from PIL import Image

from helpers import FMNIST_DIR, needs_fmnist
from fastmoco.cli import scenes as scenes_cli
from fastmoco.data.build import build_data
from fastmoco.data.classes import select_classes
from fastmoco.data.fmnist import CLASSES
from fastmoco.data.scenes import SceneSpec, default_scenes_dir, scenes_ready, write_scenes
from fastmoco.errors import DataError
from fastmoco.runs.config import TrainConfig

A = "T-shirt/top,Pullover,Dress,Coat,Shirt"  # the pre-training classes of the held-out protocol: 0 2 3 4 6


def test_classes_by_name_or_index_sorted_and_each_once():
    assert select_classes(A, CLASSES, "Fashion-MNIST") == [0, 2, 3, 4, 6]
    assert select_classes("9, Trouser,5", CLASSES, "Fashion-MNIST") == [1, 5, 9]
    assert select_classes("", CLASSES, "Fashion-MNIST") == list(range(10))


@pytest.mark.parametrize("spec,msg", [
    ("Trousers", r"^--classes: 'Trousers' is not a class of Fashion-MNIST; its classes are 0 T-shirt/top, 1 Trouser"),
    ("10", r"'10' is not a class"),
    ("1,,2", r"'' is not a class"),
    ("1,Trouser", r"^--classes: 'Trouser' is named twice in '1,Trouser'$"),
])
def test_unknown_or_repeated_classes_are_one_line(spec, msg):
    with pytest.raises(DataError, match=msg):
        select_classes(spec, CLASSES, "Fashion-MNIST")


@needs_fmnist()
def test_fashion_mnist_training_and_its_monitor_keep_only_the_chosen_classes(tmp_path):
    cfg = TrainConfig(classes=A, out=str(tmp_path), progress=False).resolved()
    data = build_data(cfg, torch.device("cpu"))
    assert set(data.labels.tolist()) == {0, 2, 3, 4, 6} == set(data.test_labels.tolist())
    assert data.num_samples == 5 * 6000 and len(data.test_labels) == 5 * 1000
    with pytest.raises(DataError, match="'Hat' is not a class of Fashion-MNIST"):
        build_data(TrainConfig(classes="Hat", out=str(tmp_path)).resolved(), torch.device("cpu"))


def _folder(root, counts: dict):
    for name, n in counts.items():
        os.makedirs(root / name)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(root / name / f"{i}.png")


def test_an_image_folder_keeps_the_chosen_class_folders(tmp_path):
    _folder(tmp_path / "train", {"ant": 3, "bee": 4, "cat": 5})
    _folder(tmp_path / "val", {"bee": 2, "cat": 2, "dog": 2})
    cfg = TrainConfig(data=str(tmp_path / "train"), val=str(tmp_path / "val"), classes="bee,2", loader="torch",
                      batch_size=4, out=str(tmp_path / "run"), progress=False, workers=0).resolved()
    data = build_data(cfg, torch.device("cpu"))
    assert sorted(os.path.basename(os.path.dirname(p)) for p, _ in data.train_ds.samples) == ["bee"] * 4 + ["cat"] * 5
    assert sorted(os.path.basename(os.path.dirname(p)) for p, _ in data.val_ds.samples) == ["bee"] * 2 + ["cat"] * 2
    with pytest.raises(DataError, match=r"'dog' is not a class of .*train \(its class folders\); its classes are "
                                        r"0 ant, 1 bee, 2 cat$"):
        build_data(TrainConfig(data=str(tmp_path / "train"), classes="dog", loader="torch", batch_size=4,
                               out=str(tmp_path / "run")).resolved(), torch.device("cpu"))


@needs_fmnist()
def test_scenes_of_a_class_subset_hold_only_those_categories_with_their_ids(tmp_path):
    spec = SceneSpec(train=6, val=3, size=96, classes=(1, 5, 7, 8, 9))
    out = write_scenes(str(tmp_path / "b"), FMNIST_DIR, spec, False)
    for split in ("train", "val"):
        coco = json.load(open(os.path.join(out, f"{split}.json")))
        assert [c["id"] for c in coco["categories"]] == [2, 6, 8, 9, 10]
        assert [c["name"] for c in coco["categories"]] == ["Trouser", "Sandal", "Sneaker", "Bag", "Ankle boot"]
        assert coco["annotations"] and {a["category_id"] for a in coco["annotations"]} <= {2, 6, 8, 9, 10}
    assert scenes_ready(out, spec) and not scenes_ready(out, SceneSpec(train=6, val=3, size=96))
    assert default_scenes_dir(spec) != default_scenes_dir(SceneSpec(train=6, val=3, size=96))
    assert default_scenes_dir(SceneSpec()).endswith("seed0")  # the all-class cache keeps its name


@needs_fmnist()
def test_the_scenes_command_takes_class_names_and_refuses_unknown_ones(tmp_path, capsys):
    assert scenes_cli.main([str(tmp_path / "s"), "--train", "3", "--val", "2", "--size", "96", "--classes",
                            "Sandal,Bag"]) == 0
    assert [c["id"] for c in json.load(open(tmp_path / "s" / "val.json"))["categories"]] == [6, 9]
    capsys.readouterr()  # the first call's progress bars
    assert scenes_cli.main([str(tmp_path / "t"), "--classes", "Sandals"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastmoco-scenes: error: --classes: 'Sandals' is not a class")
