"""COCO average precision with pycocotools (the reference implementation the papers report): box AP, AP50, AP75
and, with masks, mask AP, in percent."""
import contextlib
import io

import numpy as np
import torch

MASK_THRESHOLD = 0.5  # Mask R-CNN's masks are probabilities; COCO evaluates the binary mask at 0.5, as torchvision does


def to_coco_results(image_id: int, output: dict, cat_ids: list) -> list[dict]:
    """One image's predictions (torchvision's output dict, labels 1..C) as COCO result entries."""
    from pycocotools import mask as mask_utils

    boxes = output["boxes"].detach().cpu().double()  # (n, 4) xyxy
    scores, labels = output["scores"].detach().cpu().tolist(), output["labels"].detach().cpu().tolist()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
    rows = [{"image_id": image_id, "category_id": cat_ids[lab - 1], "bbox": [round(v, 2) for v in box],
             "score": round(s, 5)} for box, s, lab in zip(xywh, scores, labels)]
    if "masks" in output:
        binary = (output["masks"].detach().cpu()[:, 0] > MASK_THRESHOLD).numpy().astype(np.uint8)  # (n, H, W)
        for row, m in zip(rows, binary):
            rle = mask_utils.encode(np.asfortranarray(m))
            row["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
    return rows


def coco_ap(api, results: list[dict], image_ids: list, iou_types=("bbox", "segm")) -> dict:
    """{bbox_AP, bbox_AP50, bbox_AP75, [segm_AP, ...]} in percent over ``image_ids``; no detections at all is AP 0
    (pycocotools refuses an empty result list); no ground truth to score (every box a crowd region) is NaN, as
    pycocotools' -1 means: undefined, not zero."""
    from pycocotools.cocoeval import COCOeval

    out = {}
    for kind in iou_types:
        stats = np.zeros(3)
        if results:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables; the caller reports
                dt = api.loadRes([dict(r) for r in results])
                ev = COCOeval(api, dt, kind)
                ev.params.imgIds = list(image_ids)
                ev.evaluate()
                ev.accumulate()
                ev.summarize()
            stats = np.where(ev.stats[:3] < 0, np.nan, ev.stats[:3])  # -1: no ground truth at this setting
        out.update({f"{kind}_{name}": float(100.0 * v) for name, v in zip(("AP", "AP50", "AP75"), stats)})
    return out
