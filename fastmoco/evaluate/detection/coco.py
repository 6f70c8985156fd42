"""COCO-format detection data: the JSON checked up front (one line naming the first problem), then a dataset of
(image, target) pairs as torchvision's detection models take them.

Images are converted to the backbone's channels: a grey backbone (Fashion-MNIST's) sees RGB images as their luma
(ITU-R 601, PIL's "L"), an RGB backbone sees a grey image with its channel repeated. Category ids (any integers,
COCO's are not contiguous) map to labels 1..C in the order of ``categories``; 0 is the background. Crowd
annotations are not trained on (COCO evaluation ignores matches to them); boxes under one pixel wide or high once
clamped to the image are dropped, as torchvision's detection references do. 16-bit greys are scaled to 8 bits, not
clipped white.
"""
import contextlib
import io
import json
import math
import os

import torch

from fastmoco.errors import DataError
from fastmoco.data.folder import load_8bit

EDGE_SLACK = 1.0  # pixels a box may pass the image edge (rounding in converted sets); more is an error


def _load_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise DataError(f"COCO annotation file not found: {path}")
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a COCO JSON file ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path} is not a COCO JSON file: no 'images' list")
    return data


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_images(path: str, images: list, images_dir: str) -> dict:
    """{image id: (width, height)}; every entry has an id, a file in ``images_dir`` and the size of that file."""
    from PIL import Image

    if not os.path.isdir(images_dir):
        raise DataError(f"image folder not found: {images_dir}")
    sizes = {}
    for im in images:
        if not isinstance(im, dict) or not all(k in im for k in ("id", "file_name", "width", "height")):
            raise DataError(f"{path}: image entry {str(im)[:80]} lacks one of id, file_name, width, height")
        w, h = im["width"], im["height"]
        if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
            raise DataError(f"{path}: image {im['id']} has width x height {w!r} x {h!r}; both must be positive "
                            "integers")
        file = os.path.join(images_dir, str(im["file_name"]))
        if not os.path.isfile(file):
            raise DataError(f"{path}: image {im['id']}'s file {im['file_name']} is not in {images_dir}")
        try:
            with Image.open(file) as img:  # the header only: no pixels are decoded here
                shown = img.size
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"{path}: image {im['id']}'s file {file} cannot be read ({type(exc).__name__})") from None
        if shown != (w, h):
            raise DataError(f"{path}: image {im['id']} is {w}x{h} in the JSON, but its file {im['file_name']} is "
                            f"{shown[0]}x{shown[1]}; boxes and masks would be drawn at the wrong size")
        sizes[im["id"]] = (w, h)
    return sizes


def _check_annotation(path: str, a, cat_ids: set, sizes: dict, masks: bool) -> None:
    if not isinstance(a, dict):
        raise DataError(f"{path}: an annotation is {str(a)[:60]!r}, not an object")
    what = f"{path}: annotation {a.get('id')}"
    if a.get("category_id") not in cat_ids:
        raise DataError(f"{what} has category id {a.get('category_id')}, not among the categories {sorted(cat_ids)}")
    if a.get("image_id") not in sizes:
        raise DataError(f"{what} refers to image {a.get('image_id')}, not in 'images'")
    box = a.get("bbox")
    if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
        raise DataError(f"{what} has bbox {box!r}; COCO boxes are four finite numbers [x, y, width, height]")
    x, y, w, h = box
    width, height = sizes[a["image_id"]]
    if w < 0 or h < 0:
        raise DataError(f"{what} has box [x, y, w, h] = {box} with a negative side")
    if x < -EDGE_SLACK or y < -EDGE_SLACK or x + w > width + EDGE_SLACK or y + h > height + EDGE_SLACK:
        raise DataError(f"{what} has box [x, y, w, h] = {box} outside its {width}x{height} image {a['image_id']}")
    if masks and not a.get("iscrowd"):
        _check_segmentation(what, a.get("segmentation"))


def _check_segmentation(what: str, seg) -> None:
    """A polygon list (each polygon at least 3 points) or an RLE {size, counts}, as pycocotools reads them."""
    if not seg:
        raise DataError(f"{what} has no segmentation; Mask R-CNN needs masks (--model fasterrcnn trains boxes only)")
    if isinstance(seg, dict):
        if not ("size" in seg and "counts" in seg):
            raise DataError(f"{what}: its RLE segmentation lacks 'size' or 'counts'")
        return
    if not isinstance(seg, list) or not all(isinstance(p, list) for p in seg):
        raise DataError(f"{what}: segmentation must be a list of polygons or an RLE object")
    for poly in seg:
        if len(poly) < 6 or len(poly) % 2 or not all(_number(v) for v in poly):
            raise DataError(f"{what} has a polygon of {len(poly)} coordinate(s); a polygon is at least 3 (x, y) "
                            "points of finite numbers")


def check_coco(path: str, images_dir: str, masks: bool) -> dict:
    """The parsed JSON of a COCO detection set after its checks: annotations present, every category id listed,
    every box four finite numbers inside its image, every image file present at the size the JSON gives,
    polygons of at least three points when ``masks``."""
    data = _load_json(path)
    anns, cats = data.get("annotations"), data.get("categories")
    if not anns or not isinstance(anns, list):
        raise DataError(f"{path} has no annotations: a detection set needs boxes (an 'annotations' list)")
    if not cats or not isinstance(cats, list) or not all(isinstance(c, dict) and "id" in c and "name" in c
                                                         for c in cats):
        raise DataError(f"{path} has no categories (a 'categories' list of {{id, name}})")
    if data.get("info") is not None and not isinstance(data["info"], dict):
        raise DataError(f"{path}: 'info' must be an object (or absent), got {data['info']!r}")
    cat_ids = {c["id"] for c in cats}
    sizes = _check_images(path, data["images"], images_dir)
    for a in anns:
        _check_annotation(path, a, cat_ids, sizes, masks)
    return data


def coco_api(data: dict):
    """A pycocotools COCO object over already-parsed JSON (its index-building chatter silenced)."""
    from pycocotools.coco import COCO

    api = COCO()
    api.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


class CocoSet(torch.utils.data.Dataset):
    """(image (C, H, W) float in [0, 1], target {boxes (n, 4) xyxy, labels (n,), masks (n, H, W) uint8, image_id})
    for each image of a checked COCO set; ``with_boxes`` keeps only images with at least one box (training)."""

    def __init__(self, json_path: str, images_dir: str, channels: int, masks: bool, with_boxes: bool):
        self.data = check_coco(json_path, images_dir, masks)
        self.api = coco_api(self.data)
        self.images_dir, self.channels, self.masks = images_dir, channels, masks
        self.cat_ids = [c["id"] for c in self.data["categories"]]
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}
        self.names = [c["name"] for c in self.data["categories"]]
        ids = [im["id"] for im in self.data["images"]]
        self.ids = [i for i in ids if self._anns(i)] if with_boxes else ids
        if not self.ids:
            raise DataError(f"{json_path}: no image has a usable box")

    def _anns(self, image_id: int) -> list:
        """The image's trained annotations: not crowd, and at least one pixel wide and high once clamped to the
        image (a box may pass the edge by ``EDGE_SLACK``: one at the very edge clamps to nothing)."""
        w, h = self.api.imgs[image_id]["width"], self.api.imgs[image_id]["height"]
        return [a for a in self.api.imgToAnns.get(image_id, []) if not a.get("iscrowd")
                and min(a["bbox"][0] + a["bbox"][2], w) - max(a["bbox"][0], 0) >= 1
                and min(a["bbox"][1] + a["bbox"][3], h) - max(a["bbox"][1], 0) >= 1]

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, image_id: int) -> torch.Tensor:
        from PIL import Image
        from torchvision.transforms.v2 import functional as TF

        info = self.api.imgs[image_id]
        img = load_8bit(os.path.join(self.images_dir, info["file_name"]))  # 16-bit greys scaled, not clipped
        img = img.convert("L" if self.channels == 1 else "RGB")
        if img.size != (info["width"], info["height"]):  # the file changed since the up-front check
            raise DataError(f"image {image_id}'s file {info['file_name']} is {img.size[0]}x{img.size[1]}, the JSON "
                            f"says {info['width']}x{info['height']}")
        return TF.to_dtype(TF.pil_to_tensor(img), torch.float32, scale=True)  # (C, H, W)

    def __getitem__(self, i: int):
        image_id = self.ids[i]
        image = self.image(image_id)
        anns = self._anns(image_id)
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).view(-1, 4)  # (n, 4) xywh
        boxes[:, 2:] += boxes[:, :2]  # xyxy
        h, w = image.shape[-2:]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        target = dict(boxes=boxes, labels=torch.tensor([self.label_of[a["category_id"]] for a in anns],
                                                        dtype=torch.int64), image_id=image_id)
        if self.masks:
            target["masks"] = torch.stack([torch.from_numpy(self.api.annToMask(a)) for a in anns]) if anns else \
                torch.zeros(0, h, w, dtype=torch.uint8)  # (n, H, W)
        return image, target


def hflip(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    """The image and its boxes and masks mirrored left-right."""
    w = image.shape[-1]
    target = dict(target)
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
    target["boxes"] = boxes
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image.flip(-1), target
