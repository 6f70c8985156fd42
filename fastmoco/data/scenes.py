"""The embedded detection set: Fashion-MNIST items on textured canvases, as COCO JSON + PNG images.

Each scene is a ``size`` x ``size`` RGB canvas with a smooth random colour field plus pixel noise as background and
1-4 items pasted at random positions and scales (1x-2x, i.e. 28-56 px). An item's pixels are its Fashion-MNIST
image resized to its scale and tinted; its instance mask is exactly the pixels it paints (the resized image above
``INK``) that no later item covers, and its box is that mask's extent. A placement that would hide more than half
of an earlier item (counting what others already cover) is drawn again (at most ``TRIES`` times, then the item is left out), so every painted object is
annotated and no annotation is mostly hidden. Training scenes take their items from the training images, validation
scenes from the test images; everything is drawn from ``numpy.random.default_rng([seed, split])``, so a seed gives
the same files on every machine.

Layout written by ``write_scenes(out, ...)``: ``out/train.json``, ``out/val.json`` (COCO: images, annotations with
``bbox`` [x, y, w, h], ``area`` (mask pixels), ``segmentation`` as compressed RLE, ``iscrowd`` 0; the ten
categories with ids 1-10; ``info`` holding the generator's settings) and ``out/train/*.png``, ``out/val/*.png``.
"""
import json
import os
import shutil
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from fastmoco.errors import DataError
from .fmnist import CLASSES, load_fmnist

INK = 40  # an item pixel above this (of 255) is the item's: below it Fashion-MNIST's background is a faint halo
TRIES = 10
MAX_HIDDEN = 0.5
VERSION = 1  # bump when the drawing changes: a cached set of another version is redrawn


@dataclass(frozen=True)
class SceneSpec:
    train: int = 2000
    val: int = 500
    size: int = 128
    items: tuple = (1, 4)  # per scene, inclusive
    scale: tuple = (1.0, 2.0)  # item side = 28 x scale
    seed: int = 0
    classes: tuple = ()  # Fashion-MNIST class indices the items are drawn from (empty: all ten)

    def check(self):
        lo, hi = self.items
        if self.train < 1 or self.val < 1:
            raise DataError(f"need at least one training and one validation scene, got {self.train} and {self.val}")
        if not (1 <= lo <= hi):
            raise DataError(f"items per scene must be 1 <= min <= max, got {self.items}")
        if not (0 < self.scale[0] <= self.scale[1]) or round(28 * self.scale[1]) > self.size:
            raise DataError(f"item scales {self.scale} must be > 0 and fit the {self.size} px canvas (28 x scale)")
        if any(not 0 <= c < len(CLASSES) for c in self.classes) or len(set(self.classes)) < len(self.classes):
            raise DataError(f"scene classes must be distinct indices 0-{len(CLASSES) - 1}, got {self.classes}")


def _background(rng, size: int) -> np.ndarray:
    """A smooth random colour field (an 8x8 grid of colours, bicubic-upsampled) plus pixel noise."""
    coarse = rng.uniform(0, 110, (8, 8, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.float32)
    field += rng.normal(0, 12, (size, size, 3))
    return np.clip(field, 0, 255)  # (size, size, 3)


def _item(rng, image: np.ndarray, scale: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(tinted RGB pixels (s, s, 3), mask (s, s) bool) of one item at a random scale."""
    side = int(round(28 * rng.uniform(*scale)))
    grey = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR), dtype=np.float32)  # (s, s)
    tint = rng.uniform(0.55, 1.0, 3).astype(np.float32)
    return grey[..., None] * tint, grey > INK


def draw_scene(rng, images: np.ndarray, labels: np.ndarray, spec: SceneSpec):
    """(canvas (size, size, 3) uint8, [(label, mask (size, size) bool), ...]) of one scene."""
    size = spec.size
    canvas = _background(rng, size)
    objects = []  # [label, visible mask, full area]: no item ends up with more than MAX_HIDDEN of it covered
    for _ in range(int(rng.integers(spec.items[0], spec.items[1] + 1))):
        idx = int(rng.integers(len(images)))
        pixels, mask = _item(rng, images[idx], spec.scale)
        side = mask.shape[0]
        for _try in range(TRIES):
            y, x = (int(v) for v in rng.integers(0, size - side + 1, 2))
            full = np.zeros((size, size), bool)
            full[y:y + side, x:x + side] = mask
            if all((m & ~full).sum() >= (1 - MAX_HIDDEN) * area for _, m, area in objects):
                break
        else:
            continue  # no room for it: left out, nothing painted
        region = canvas[y:y + side, x:x + side]
        region[mask] = pixels[mask]
        for obj in objects:
            obj[1] = obj[1] & ~full
        objects.append([int(labels[idx]), full, int(mask.sum())])
    return canvas.round().astype(np.uint8), [(lab, m) for lab, m, _ in objects if m.any()]


def box_of(mask: np.ndarray) -> list[int]:
    """COCO [x, y, w, h] of a mask's extent (pixel-exact: x + w is one past the last column)."""
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def rle_of(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def write_split(out: str, split: str, images, labels, spec: SceneSpec, count: int, progress: bool) -> dict:
    """One split of ``count`` scenes of ``images`` (N, 28, 28) uint8 into ``out/split/*.png`` + ``out/split.json``."""
    from tqdm import tqdm

    rng = np.random.default_rng([spec.seed, 0 if split == "train" else 1])
    os.makedirs(os.path.join(out, split))
    chosen = spec.classes or tuple(range(len(CLASSES)))
    if spec.classes:  # items of the chosen classes only; the categories keep their ids (label + 1)
        keep = np.isin(labels, chosen)
        images, labels = images[keep], labels[keep]
    coco = {"info": {"description": "fastmoco Fashion-MNIST scenes", "version": VERSION, **_info(spec)},
            "images": [], "annotations": [],
            "categories": [{"id": i + 1, "name": CLASSES[i], "supercategory": "fashion"} for i in chosen]}
    for i in tqdm(range(count), desc=f"scenes ({split})", disable=not progress, leave=False, dynamic_ncols=True):
        canvas, objects = draw_scene(rng, images, labels, spec)
        name = f"{split}/{i:06d}.png"
        Image.fromarray(canvas).save(os.path.join(out, name))
        coco["images"].append({"id": i + 1, "file_name": os.path.basename(name), "width": spec.size,
                               "height": spec.size})
        for label, mask in objects:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i + 1,
                                        "category_id": label + 1, "bbox": box_of(mask), "area": int(mask.sum()),
                                        "segmentation": rle_of(mask), "iscrowd": 0})
    with open(os.path.join(out, f"{split}.json"), "w") as fh:
        json.dump(coco, fh)
    return coco


def _info(spec: SceneSpec) -> dict:
    """The settings a set records (``classes`` only when it is a subset: sets of all ten stay as they were)."""
    info = asdict(spec)
    if not spec.classes:
        del info["classes"]
    return info


def scenes_ready(out: str, spec: SceneSpec) -> bool:
    """Whether ``out`` holds a complete scene set drawn with ``spec`` by this version."""
    want = {"version": VERSION, **json.loads(json.dumps(_info(spec)))}
    try:
        for split in ("train", "val"):
            with open(os.path.join(out, f"{split}.json")) as fh:
                info = json.load(fh)["info"]
            if {k: info.get(k) for k in want} != want or (not spec.classes and info.get("classes")):
                return False
    except (OSError, ValueError, KeyError):
        return False
    return True


def write_scenes(out: str, fmnist_root: str, spec: SceneSpec = SceneSpec(), progress: bool = True) -> str:
    """Draws the scene set into ``out`` (built in a temporary folder beside it, then renamed: an interrupted run
    leaves no half set under ``out``); a complete set of the same settings is kept as it is. Returns ``out``."""
    spec.check()
    if scenes_ready(out, spec):
        return out
    if os.path.exists(out) and os.listdir(out):
        raise DataError(f"{out} exists and is not a scene set of these settings; remove it or choose another folder")
    tmp = f"{out.rstrip(os.sep)}.tmp.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for split, train in (("train", True), ("val", False)):
            images, labels = load_fmnist(fmnist_root, train=train)
            write_split(tmp, split, images[:, 0].numpy(), labels.numpy(), spec, getattr(spec, split), progress)
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def default_scenes_dir(spec: SceneSpec = SceneSpec()) -> str:
    """Where the default scene set is cached: ``$FASTMOCO_CACHE`` (default ``~/.cache/fastmoco``)/scenes-..."""
    root = os.environ.get("FASTMOCO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fastmoco")
    tag = f"v{VERSION}-{spec.train}-{spec.val}-{spec.size}px-{spec.items[0]}to{spec.items[1]}-" \
          f"{spec.scale[0]:g}to{spec.scale[1]:g}x-seed{spec.seed}" \
          + ("-classes" + "_".join(map(str, spec.classes)) if spec.classes else "")
    return os.path.join(root, "scenes-" + tag)
