"""Transfer to detection and instance segmentation: torchvision's Mask R-CNN / Faster R-CNN with a feature pyramid
over a fastmoco backbone, fine-tuned on COCO-format data (``coco``), scored with COCO AP (``cocoeval``).
``source`` reads the backbone, ``settings`` holds the options, ``finetune`` runs it, ``draw`` pictures it."""
from .cocoeval import coco_ap, to_coco_results
from .coco import CocoSet, check_coco
from .finetune import evaluate, run_detect
from .settings import DetectSettings, lr_factor
from .source import load_source

__all__ = ["CocoSet", "DetectSettings", "check_coco", "coco_ap", "evaluate", "load_source", "lr_factor", "run_detect",
           "to_coco_results"]
