"""COCO-format detection data: the JSON checked up front (one line naming the first problem), then a dataset of
(image, target) pairs as torchvision's detection models take them.

Images are converted to the backbone's channels: a grey backbone (Fashion-MNIST's) sees RGB images as their luma
(ITU-R 601, PIL's "L"), an RGB backbone sees a grey image with its channel repeated. Category ids (any integers,
COCO's are not contiguous) map to labels 1..C in the order of ``categories``; 0 is the background. Crowd
annotations are not trained on (COCO evaluation ignores matches to them); boxes under one pixel wide or high are
dropped, as torchvision's detection references do.
"""
import contextlib
import io
import json
import os

import torch

from fastmoco.data.errors import DataError

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


def check_coco(path: str, images_dir: str, masks: bool) -> dict:
    """The parsed JSON of a COCO detection set after its checks: annotations present, every category id listed,
    every box inside its image, every image file present, segmentations present when ``masks``."""
    data = _load_json(path)
    anns, cats = data.get("annotations"), data.get("categories")
    if not anns:
        raise DataError(f"{path} has no annotations: a detection set needs boxes (an 'annotations' list)")
    if not cats:
        raise DataError(f"{path} has no categories (a 'categories' list of {{id, name}})")
    cat_ids = {c["id"] for c in cats}
    sizes = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    for a in anns:
        if a.get("category_id") not in cat_ids:
            raise DataError(f"{path}: annotation {a.get('id')} has category id {a.get('category_id')}, not among "
                            f"the categories {sorted(cat_ids)}")
        if a.get("image_id") not in sizes:
            raise DataError(f"{path}: annotation {a.get('id')} refers to image {a.get('image_id')}, not in 'images'")
        x, y, w, h = a["bbox"]
        width, height = sizes[a["image_id"]]
        if x < -EDGE_SLACK or y < -EDGE_SLACK or x + w > width + EDGE_SLACK or y + h > height + EDGE_SLACK:
            raise DataError(f"{path}: annotation {a.get('id')} has box [x, y, w, h] = {a['bbox']} outside its "
                            f"{width}x{height} image {a['image_id']}")
        if masks and not a.get("segmentation"):
            raise DataError(f"{path}: annotation {a.get('id')} has no segmentation; Mask R-CNN needs masks "
                            f"(--model fasterrcnn trains boxes only)")
    if not os.path.isdir(images_dir):
        raise DataError(f"image folder not found: {images_dir}")
    for im in data["images"]:
        if not os.path.isfile(os.path.join(images_dir, im["file_name"])):
            raise DataError(f"{path}: image {im['id']}'s file {im['file_name']} is not in {images_dir}")
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
        anns = self.api.imgToAnns.get(image_id, [])
        return [a for a in anns if not a.get("iscrowd") and a["bbox"][2] >= 1 and a["bbox"][3] >= 1]

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, image_id: int) -> torch.Tensor:
        from PIL import Image
        from torchvision.transforms.v2 import functional as TF

        info = self.api.imgs[image_id]
        with Image.open(os.path.join(self.images_dir, info["file_name"])) as img:
            img = img.convert("L" if self.channels == 1 else "RGB")
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
