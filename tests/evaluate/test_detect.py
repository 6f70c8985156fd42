"""Transfer to detection: the scene generator's boxes and masks, the backbone's wiring into the pyramid, COCO AP on
hand-made cases with known values, resume, and bad inputs as one-line errors."""
import json
import os

import numpy as np
import pytest
import torch

from helpers import FMNIST_DIR, cuda_only, needs_fmnist
from fastmoco.errors import DataError
from fastmoco.data.scenes import SceneSpec, box_of, draw_scene, rle_of, write_scenes, write_split
from fastmoco.evaluate.detection import CocoSet, DetectSettings, coco_ap, lr_factor, run_detect
from fastmoco.evaluate.detection.coco import coco_api, hflip
from fastmoco.evaluate.detection.source import load_source
from fastmoco.models import WideResNet, build_detector
from fastmoco.models.detection import ResNetFPN, freeze_bn
from fastmoco.runs.config import ConfigError


def _block_items(n=4, top=5, left=9, h=10, w=6, value=200):
    """Item images that are one solid block each: at scale 1 an item's mask is exactly that block."""
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, top:top + h, left:left + w] = value
    return images, np.arange(n) % 10


# -- the scene generator -------------------------------------------------------------------------------------
def test_one_item_mask_and_box_are_the_items_pixels():
    images, labels = _block_items()
    spec = SceneSpec(size=64, items=(1, 1), scale=(1.0, 1.0))
    for seed in range(5):
        canvas, objects = draw_scene(np.random.default_rng(seed), images, labels, spec)
        (label, mask), = objects
        assert mask.sum() == 60  # the 10 x 6 block, nothing of the item's dark background
        x, y, w, h = box_of(mask)
        assert (w, h) == (6, 10) and mask[y:y + h, x:x + w].all()
        colour = canvas[mask]  # (60, 3): the tinted block, one colour
        assert (colour == colour[0]).all() and (colour[0] <= 200).all() and (colour[0] >= round(0.55 * 200)).all()


def test_occluded_items_keep_only_their_visible_pixels():
    images, labels = _block_items(value=250)
    spec = SceneSpec(size=40, items=(3, 3), scale=(1.0, 1.0))
    seen_overlap = False
    for seed in range(30):
        canvas, objects = draw_scene(np.random.default_rng(seed), images, labels, spec)
        masks = [m for _, m in objects]
        total = sum(m.astype(int) for m in masks)
        assert total.max() <= 1  # a pixel belongs to one item: the one painted last
        for m in masks:
            assert 30 <= m.sum() <= 60  # at most half of an item hidden
        seen_overlap |= any(m.sum() < 60 for m in masks)
    assert seen_overlap  # the case was exercised


def test_rle_decodes_to_the_mask():
    from pycocotools import mask as mask_utils

    mask = np.zeros((17, 23), bool)
    mask[3:9, 4:20] = True
    mask[10, 1] = True
    rle = rle_of(mask)
    assert (mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}) == mask).all()
    assert box_of(mask) == [1, 3, 19, 8]


@needs_fmnist()
def test_written_scenes_are_deterministic_and_their_boxes_match_their_masks(tmp_path):
    spec = SceneSpec(train=6, val=3, size=96, seed=3)
    a, b = write_scenes(str(tmp_path / "a"), FMNIST_DIR, spec, False), write_scenes(str(tmp_path / "b"), FMNIST_DIR,
                                                                                    spec, False)
    for split in ("train", "val"):
        ja, jb = (open(os.path.join(d, f"{split}.json")).read() for d in (a, b))
        assert ja == jb
        for name in sorted(os.listdir(os.path.join(a, split))):
            assert open(os.path.join(a, split, name), "rb").read() == open(os.path.join(b, split, name), "rb").read()
    ds = CocoSet(os.path.join(a, "train.json"), os.path.join(a, "train"), 3, True, True)
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, 96, 96)
        for box, mask in zip(target["boxes"], target["masks"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    assert write_scenes(a, FMNIST_DIR, spec, False) == a  # a complete set is kept
    with pytest.raises(DataError, match="not a scene set of these settings"):
        write_scenes(a, FMNIST_DIR, SceneSpec(train=7, val=3, size=96), False)


def test_hflip_mirrors_boxes_and_masks():
    image = torch.zeros(1, 4, 10)
    masks = torch.zeros(1, 4, 10, dtype=torch.uint8)
    masks[0, 1:3, 0:3] = 1
    image[0, 1:3, 0:3] = 1
    target = dict(boxes=torch.tensor([[0.0, 1.0, 3.0, 3.0]]), masks=masks)
    im2, t2 = hflip(image, target)
    assert t2["boxes"].tolist() == [[7.0, 1.0, 10.0, 3.0]]
    assert t2["masks"][0, 1:3, 7:10].all() and t2["masks"].sum() == 6 and im2[0, 1, 9] == 1


# -- the backbone inside the detector ----------------------------------------------------------------------
@pytest.mark.parametrize("arch,width,stem,widths,strides", [
    ("resnet10", 16, "small-s2", [16, 32, 64, 128], [2, 4, 8, 16, 32]),
    ("resnet50", 8, "imagenet", [32, 64, 128, 256], [4, 8, 16, 32, 64]),
    ("resnet18", 4, "small", [4, 8, 16, 32], [1, 2, 4, 8, 16]),
])
def test_pyramid_levels_follow_the_backbones_widths_and_strides(arch, width, stem, widths, strides):
    net = ResNetFPN(WideResNet(arch, width, stem, 1), stem, 24).eval()
    assert net.in_channels_list == widths and net.strides == strides
    feats = net(torch.randn(1, 1, 64, 64))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    for f, s in zip(feats.values(), strides):
        assert f.shape == (1, 24, -(-64 // s), -(-64 // s))


def test_stages_run_the_stem_in_torchvisions_order():
    resnet = WideResNet("resnet18", 8, "imagenet", 3).eval()  # the stem registers its pool before its BN
    with torch.no_grad():
        resnet.bn1.running_mean.uniform_(-1, 1)  # so BN-before-pool and pool-before-BN differ
        resnet.bn1.bias.uniform_(-1, 1)
        x = torch.randn(2, 3, 64, 64)
        last = ResNetFPN(resnet, "imagenet", 16).stages(x)["3"]  # (2, 64, 2, 2)
        assert torch.allclose(last.mean((2, 3)), resnet(x), atol=1e-6)


def test_a_backbone_file_is_really_loaded(tmp_path):
    resnet = WideResNet("resnet10", 8, "small-s2", 1)
    sd = {k: v.clone() for k, v in resnet.state_dict().items()}
    sd["fc.weight"] = torch.zeros(10, 64)  # a classifier beside the backbone is ignored
    torch.save(sd, tmp_path / "a.pt")
    sd["layer1.0.conv1.weight"] = sd["layer1.0.conv1.weight"] + 0.5
    torch.save(sd, tmp_path / "b.pt")
    x = torch.randn(2, 1, 32, 32)
    outs = []
    for name in ("a.pt", "b.pt"):
        b = load_source(str(tmp_path / name), "resnet10", 8, "small-s2", 1)
        assert b.stem == "small-s2" and b.in_channels == 1 and b.mean is None
        det = build_detector(b.resnet, b.stem, 10, image_size=32, mean=(0.5,), std=(0.25,)).eval()
        with torch.no_grad():
            outs.append(det.backbone(x)["0"])
    with torch.no_grad():
        loaded = load_source(str(tmp_path / "a.pt"), "resnet10", 8, "small-s2", 1).resnet.eval()
        assert torch.equal(loaded(x), resnet.eval()(x))
    assert not torch.allclose(outs[0], outs[1])


def test_frozen_norm_keeps_the_statistics_and_trains_no_bn():
    resnet = WideResNet("resnet10", 8, "small-s2", 1)
    with torch.no_grad():
        resnet.bn1.running_var.fill_(4.0)
    det = build_detector(resnet, "small-s2", 3, norm="frozen", image_size=32, mean=(0.5,), std=(0.25,))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in det.modules())
    assert torch.equal(det.backbone.body.bn1.running_var, torch.full((8,), 4.0))
    trained = build_detector(WideResNet("resnet10", 8, "small-s2", 1), "small-s2", 3, norm="bn", image_size=32,
                             mean=(0.5,), std=(0.25,))
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in trained.backbone.fpn.modules()) == 8  # FPN has BN too


def test_lr_schedule_warms_up_then_steps_at_two_thirds_and_eight_ninths():
    assert lr_factor(0, 90, 10) == pytest.approx(0.001)
    assert lr_factor(5, 90, 10) == pytest.approx(0.001 + 0.999 * 0.5)
    assert [lr_factor(i, 90, 10) for i in (10, 59, 60, 79, 80, 89)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


# -- COCO AP on hand-made cases ----------------------------------------------------------------------------
def _gt():
    masks = [np.zeros((20, 20), bool), np.zeros((20, 20), bool)]
    masks[0][2:8, 2:10] = True
    masks[1][10:18, 5:15] = True
    anns = [{"id": i + 1, "image_id": 1, "category_id": 7, "bbox": box_of(m), "area": int(m.sum()),
             "segmentation": rle_of(m), "iscrowd": 0} for i, m in enumerate(masks)]
    data = {"images": [{"id": 1, "width": 20, "height": 20, "file_name": "x.png"}], "annotations": anns,
            "categories": [{"id": 7, "name": "thing"}]}
    return coco_api(data), anns


def test_coco_ap_of_known_cases():
    api, anns = _gt()
    found = lambda a: {"image_id": 1, "category_id": 7, "bbox": a["bbox"], "score": 0.9,  # noqa: E731
                       "segmentation": a["segmentation"]}
    both = coco_ap(api, [found(a) for a in anns], [1])
    assert both["bbox_AP"] == pytest.approx(100.0) and both["segm_AP"] == pytest.approx(100.0)
    # one of two found: precision 1 up to recall 0.5, nothing beyond: 51 of COCO's 101 recall points
    half = coco_ap(api, [found(anns[0])], [1])
    assert half["bbox_AP"] == pytest.approx(100 * 51 / 101) and half["segm_AP75"] == pytest.approx(100 * 51 / 101)
    assert coco_ap(api, [], [1]) == {k: 0.0 for k in half}  # no detections at all


# -- fine-tuning end to end: resume, bad inputs ----------------------------------------------------------------
def _tiny_set(root, n_train=8, n_val=2):
    """A small COCO set of block items on 48 px canvases, written by the scene set's own split writer."""
    images, labels = _block_items(value=230)
    spec = SceneSpec(size=48, items=(1, 2), scale=(1.0, 1.0))
    for split, n in (("train", n_train), ("val", n_val)):
        write_split(root, split, images, labels, spec, n, False)
    return {split: (os.path.join(root, f"{split}.json"), os.path.join(root, split)) for split in ("train", "val")}


def _settings(paths, out, **kw):
    return DetectSettings(**{"train_json": paths["train"][0], "train_images": paths["train"][1],
                             "val_json": paths["val"][0], "val_images": paths["val"][1], "out": out and str(out),
                             "epochs": 2, "batch_size": 4, "width": 4, "workers": 0, "progress": False,
                             "show": 1, "warmup_iters": 2, "fpn_channels": 16, **kw})


def test_resumed_fine_tuning_takes_the_uninterrupted_runs_steps(tmp_path, monkeypatch):
    import fastmoco.evaluate.detection.finetune as ft

    paths = _tiny_set(str(tmp_path / "data"))
    whole = run_detect("random", _settings(paths, tmp_path / "whole"), log=lambda *_: None)
    assert os.path.isfile(tmp_path / "whole" / "predictions.png")
    save = ft._save
    calls = []

    def interrupted(run, out):  # the first checkpoint (step 1 of 4) is written, then the process "dies"
        save(run, out)
        calls.append(run.iteration)
        raise KeyboardInterrupt
    monkeypatch.setattr(ft, "_save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_detect("random", _settings(paths, tmp_path / "cut", checkpoint_every=1), log=lambda *_: None)
    monkeypatch.setattr(ft, "_save", save)
    assert calls == [1]
    said = []
    resumed = run_detect("random", _settings(paths, tmp_path / "cut", checkpoint_every=1), log=said.append)
    assert any("resuming" in line and "step 1 of 4" in line for line in said)
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed == whole
    # the first epoch's loss averages all of its steps, the one before the interruption included
    assert open(tmp_path / "cut" / "metrics.csv").read() == open(tmp_path / "whole" / "metrics.csv").read()
    with pytest.raises(ConfigError, match="other settings.*lr"):
        run_detect("random", _settings(paths, tmp_path / "cut", lr=0.5), log=lambda *_: None)


def _cli_error(capsys, argv) -> str:
    from fastmoco.cli.detect import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _with(paths, tmp_path, edit):
    data = json.load(open(paths["train"][0]))
    edit(data)
    bad = str(tmp_path / "bad.json")
    json.dump(data, open(bad, "w"))
    return ["random", "--train-json", bad, "--train-images", paths["train"][1], "--val-json", paths["val"][0],
            "--val-images", paths["val"][1], "--out", str(tmp_path / "o"), "--no-progress", "--width", "4"]


def test_bad_detection_inputs_are_one_line_errors(tmp_path, capsys):
    paths = _tiny_set(str(tmp_path / "data"))

    def no_anns(d):
        d["annotations"] = []

    def outside(d):
        d["annotations"][0]["bbox"] = [40, 40, 20, 20]

    def unknown_cat(d):
        d["annotations"][1]["category_id"] = 99

    assert "has no annotations" in _cli_error(capsys, _with(paths, tmp_path, no_anns))
    assert "outside its 48x48 image" in _cli_error(capsys, _with(paths, tmp_path, outside))
    assert "category id 99, not among the categories" in _cli_error(capsys, _with(paths, tmp_path, unknown_cat))
    assert not os.path.exists(tmp_path / "o")  # nothing written
    from timm import create_model

    torch.save(create_model("vit_tiny_patch16_224", pretrained=False, img_size=32).state_dict(), tmp_path / "vit.pt")
    line = _cli_error(capsys, [str(tmp_path / "vit.pt"), "--no-progress"])
    # ViTs are wrapped now (test_detect_vit.py); a ViT of a shape fastmoco does not build is named in one line
    assert "vit.pt: a ViT fastmoco cannot build (patch 16, width 192, depth 12)" in line
    assert "needs CUDA" in _cli_error(capsys, _with(paths, tmp_path, lambda d: None) + ["--norm", "syncbn"])
    assert "all four of --train-json" in _cli_error(capsys, ["random", "--train-json", paths["train"][0]])


def test_bad_annotations_and_settings_are_one_line_errors(tmp_path, capsys):
    paths = _tiny_set(str(tmp_path / "data"))

    def ann(key, value):
        def edit(d):
            if value is None:
                del d["annotations"][0][key]
            else:
                d["annotations"][0][key] = value
        return edit

    def image_size(d):
        d["images"][0]["width"] = 64

    cases = [(ann("bbox", None), "has bbox None; COCO boxes are four finite numbers"),
             (ann("bbox", [float("nan"), 2, 5, 5]), "has bbox [nan, 2, 5, 5]; COCO boxes are four finite numbers"),
             (ann("bbox", [2, 2, -3, 5]), "with a negative side"),
             (ann("segmentation", [[1, 1, 5, 5]]), "has a polygon of 4 coordinate(s); a polygon is at least 3"),
             (ann("segmentation", {"size": [48, 48]}), "its RLE segmentation lacks 'size' or 'counts'"),
             (lambda d: d.update(info="scenes"), "'info' must be an object (or absent)"),
             (image_size, "is 64x48 in the JSON, but its file")]
    for edit, expected in cases:
        assert expected in _cli_error(capsys, _with(paths, tmp_path, edit)), expected
    good = _with(paths, tmp_path, lambda d: None)
    for flag, value, expected in [("--eval-every", "0", "--eval-every must be >= 1, got 0"),
                                  ("--checkpoint-every", "0", "--checkpoint-every must be >= 1"),
                                  ("--image-size", "-5", "--image-size must be >= 1, got -5"),
                                  ("--fpn-channels", "-8", "--fpn-channels must be >= 1"),
                                  ("--in-channels", "0", "--in-channels must be >= 1"),
                                  ("--momentum", "5", "--momentum must be in [0, 1), got 5.0"),
                                  ("--weight-decay", "-1", "--weight-decay must be >= 0")]:
        assert expected in _cli_error(capsys, good + [flag, value]), flag
    assert not os.path.exists(tmp_path / "o")  # nothing written


def test_all_crowd_validation_is_refused_and_its_ap_is_undefined(tmp_path, capsys):
    paths = _tiny_set(str(tmp_path / "data"))
    val = json.load(open(paths["val"][0]))
    for a in val["annotations"]:
        a["iscrowd"] = 1
    json.dump(val, open(paths["val"][0], "w"))
    assert "every annotation is a crowd region" in _cli_error(capsys, _with(paths, tmp_path, lambda d: None))
    api = coco_api(val)
    res = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
           for a in val["annotations"]]
    ap = coco_ap(api, res, [im["id"] for im in val["images"]], ("bbox",))
    assert all(np.isnan(v) for v in ap.values()), ap  # undefined, not 0


def test_deep_greys_edge_boxes_and_a_null_info_train(tmp_path):
    """A 16-bit grey file keeps its contrast (PIL's own convert clips it white), a box that passes the image edge
    by less than a pixel is left out (clamped it has no width), and "info": null is an absent info."""
    from PIL import Image

    paths = _tiny_set(str(tmp_path / "data"))
    data = json.load(open(paths["train"][0]))
    data["info"] = None
    first = data["images"][0]
    file = os.path.join(paths["train"][1], first["file_name"])
    grey = np.asarray(Image.open(file).convert("L"), dtype=np.uint16) * 257  # the same picture in 16 bits
    Image.fromarray(grey).save(file)  # mode I;16
    edge = dict(data["annotations"][0], id=999, bbox=[first["width"] - 0.5, 3.0, 1.2, 6.0], segmentation=[
        [first["width"] - 0.5, 3.0, first["width"] + 0.7, 3.0, first["width"] + 0.7, 9.0]], image_id=first["id"])
    data["annotations"].append(edge)
    json.dump(data, open(paths["train"][0], "w"))
    ds = CocoSet(paths["train"][0], paths["train"][1], 1, True, with_boxes=True)
    image = ds.image(first["id"])  # (1, H, W)
    want = torch.from_numpy(grey.astype(np.float32) / 65535.0)
    assert torch.allclose(image[0], want, atol=1e-6) and 0.5 < image.max() < 1.0
    assert 999 not in [a["id"] for a in ds._anns(first["id"])]
    res = run_detect("random", _settings(paths, tmp_path / "o", epochs=1, show=0), log=lambda *_: None)
    assert np.isfinite(res["bbox_AP"])


def test_detect_never_writes_over_a_training_run(tmp_path, capsys):
    paths = _tiny_set(str(tmp_path / "data"))
    run = tmp_path / "run"
    run.mkdir()
    torch.save(dict(model={}, optimizer={}, config={}, epoch=3), run / "last.pt")
    (run / "config.yaml").write_text("epochs: 3\n")
    (run / "metrics.csv").write_text("epoch,knn_top1\n3,70.0\n")
    before = {f: (run / f).read_bytes() for f in os.listdir(run)}
    args = _with(paths, tmp_path, lambda d: None)[:-5] + ["--out", str(run), "--no-progress", "--width", "4"]
    for resume in ("never", "auto"):
        line = _cli_error(capsys, args + ["--resume", resume])
        assert f"{run} holds a MoCo training run" in line and "pass another --out" in line
    (run / "config.yaml").unlink()
    before.pop("config.yaml")
    line = _cli_error(capsys, args + ["--resume", "never"])
    assert "holds a last.pt that is not a detector fine-tuning checkpoint" in line
    (run / "last.pt").write_bytes(b"not a checkpoint")
    before["last.pt"] = b"not a checkpoint"
    assert "holds a last.pt that is not" in _cli_error(capsys, args + ["--resume", "never"])
    assert {f: (run / f).read_bytes() for f in os.listdir(run)} == before  # untouched
    (tmp_path / "file").write_text("x")
    assert "is a file, not a folder" in _cli_error(capsys, args + ["--out", str(tmp_path / "file")])


@needs_fmnist()
def test_fine_tunes_from_a_fastmoco_run_with_its_normalisation(tmp_path):
    from fastmoco.train import TrainConfig, train

    run = str(tmp_path / "run")
    train(TrainConfig(subset=256, batch_size=64, epochs=1, width=4, K=128, progress=False, out=run,
                      overwrite=True).resolved(), log=lambda *_: None)
    paths = _tiny_set(str(tmp_path / "data"))
    said = []
    res = run_detect(run, _settings(paths, None, epochs=1, norm="frozen", model="fasterrcnn", show=0),
                     log=said.append)
    state = torch.load(os.path.join(run, "detect", "last.pt"), weights_only=True)
    from fastmoco.runs.read import read_run

    meta = read_run(run)[2]
    assert state["mean"] == list(meta["mean"]) and state["std"] == list(meta["std"])  # the run's, not the scenes'
    assert said[0].startswith(f"fine-tuning fasterrcnn (frozen) from {run}: ")
    assert set(res) >= {"bbox_AP", "bbox_AP50", "bbox_AP75"} and "segm_AP" not in res
    assert os.path.isfile(os.path.join(run, "detect", "metrics.csv"))


def _detect_worker(rank, world, port, results, paths, out):
    import fastmoco.evaluate.detection.finetune as ft
    from processes import join_env

    join_env(rank, world, port)
    save, states = ft._save, []

    def recording(run, where):  # every process's model at each checkpoint (process 0 alone writes the file)
        save(run, where)
        states.append({k: v.clone() for k, v in run.model.state_dict().items()})
    ft._save = recording
    res = run_detect("random", _settings(paths, out, epochs=1, show=0, checkpoint_every=1), log=lambda *_: None)
    results[rank] = dict(res=res, states=states)


@pytest.mark.slow
def test_two_processes_fine_tune_one_detector(tmp_path):
    from processes import spawn

    paths = _tiny_set(str(tmp_path / "data"))
    two = spawn(_detect_worker, paths, str(tmp_path / "two"))
    assert len(two[0]["states"]) == len(two[1]["states"]) == 2  # step 1 of 2 (4 images, 2 each), the epoch's end
    for a, b in zip(two[0]["states"], two[1]["states"]):  # gradients averaged, BN statistics averaged: one model
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert set(two[0]["res"]) >= {"bbox_AP", "segm_AP"} and two[1]["res"] == {}  # process 0 scores all images
    saved = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[k], v) for k, v in two[0]["states"][-1].items())


def test_images_are_converted_to_the_backbones_channels(tmp_path):
    from PIL import Image

    paths = _tiny_set(str(tmp_path / "data"), n_train=4, n_val=1)
    grey = CocoSet(*paths["train"], channels=1, masks=True, with_boxes=True)
    rgb = CocoSet(*paths["train"], channels=3, masks=True, with_boxes=True)
    image_id = grey.ids[0]
    luma = np.asarray(Image.open(os.path.join(paths["train"][1], "000000.png")).convert("L"), np.float32) / 255
    assert grey.image(image_id).shape == (1, 48, 48) and rgb.image(image_id).shape == (3, 48, 48)
    assert torch.allclose(grey.image(image_id)[0], torch.from_numpy(luma))  # ITU-R 601 luma, as PIL's "L"
    Image.fromarray((luma * 255).astype(np.uint8)).save(os.path.join(paths["train"][1], "000000.png"))  # grey
    again = rgb.image(image_id)
    assert torch.equal(again[0], again[1]) and torch.equal(again[1], again[2])  # its channel repeated


@cuda_only
def test_fine_tunes_on_cuda(tmp_path):
    """The detector, its data and its evaluation on the GPU (runs in benchmarks/gpu_check.sh)."""
    paths = _tiny_set(str(tmp_path / "data"))
    res = run_detect("random", _settings(paths, tmp_path / "gpu", epochs=1, device="cuda"), log=lambda *_: None)
    assert set(res) >= {"bbox_AP", "segm_AP"}
    said = []  # the CUDA run's checkpoint resumes on the CPU (it is finished: nothing left to train)
    again = run_detect("random", _settings(paths, tmp_path / "gpu", epochs=1, device="cpu"), log=said.append)
    assert any("resuming" in line for line in said) and again == res
