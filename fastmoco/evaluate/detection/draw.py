"""A picture of what the detector sees: a few validation images with the predicted boxes (class and score) and
masks drawn over them, in one PNG grid."""
import os

import torch

SCORE = 0.5  # predictions drawn: those above this score (torchvision's demos use 0.5 too)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
           "#7f7f7f")  # one colour per class (matplotlib's tab10); torchvision's own first colour is black
SIDE = 384  # small images are enlarged (nearest, by a whole factor) to about this side so the labels stay readable


@torch.no_grad()
def draw_predictions(model, ds, count: int, path: str, device) -> str:
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid
    from torchvision.transforms.v2 import functional as TF

    tiles = []
    for image_id in ds.ids[:count]:
        image = ds.image(image_id)  # (C, H, W) in [0, 1]
        out = {k: v.cpu() for k, v in model([image.to(device)])[0].items()}
        keep = out["scores"] > SCORE
        colors = [PALETTE[(lab - 1) % len(PALETTE)] for lab in out["labels"][keep].tolist()]
        rgb = TF.to_dtype(image.expand(3, -1, -1) if image.shape[0] == 1 else image, torch.uint8, scale=True)
        h, w = rgb.shape[1:]
        zoom = max(1, SIDE // max(h, w))
        rgb = TF.resize(rgb, [h * zoom, w * zoom], interpolation=TF.InterpolationMode.NEAREST)  # room for labels
        if "masks" in out and keep.any():
            masks = TF.resize(out["masks"][keep, 0], [h * zoom, w * zoom], antialias=False) > 0.5  # (n, H, W)
            rgb = draw_segmentation_masks(rgb, masks, alpha=0.45, colors=colors)
        labels = [f"{ds.names[lab - 1]} {sc:.2f}" for lab, sc in zip(out["labels"][keep].tolist(),
                                                                      out["scores"][keep].tolist())]
        big = draw_bounding_boxes(rgb, out["boxes"][keep] * zoom, labels, colors=colors, width=2) if keep.any() \
            else rgb
        tiles.append(big)
    grid = make_grid(tiles, nrow=min(3, len(tiles)), padding=4, pad_value=255)
    tmp = path + ".tmp.png"
    TF.to_pil_image(grid).save(tmp)
    os.replace(tmp, path)
    return path
