"""fastmoco-detect SOURCE: fine-tune Mask R-CNN (FPN) from a backbone, all layers, and report COCO box / mask AP.

SOURCE is a fastmoco run directory (trained, or imported with fastmoco-convert), a ResNet state_dict with
torchvision names (export/backbone.pt, torchvision's weights), or "random". Without --train-json and friends it
trains on the embedded Fashion-MNIST scenes (drawn on first use into ~/.cache/fastmoco).

  fastmoco-detect runs/fastmoco                                   # MoCo backbone -> runs/fastmoco/detect
  fastmoco-detect random --out detect-random                      # the same detector from random init
  fastmoco-detect runs/r50 --train-json coco/annotations/instances_train2017.json --train-images coco/train2017 \\
      --val-json coco/annotations/instances_val2017.json --val-images coco/val2017
  torchrun --nproc_per_node=8 -m fastmoco.detect runs/r50 ...     # SyncBN in backbone and FPN on CUDA
"""
import argparse

from fastmoco.cli import ArgumentParser, add_fields, run_cli

HELP = {
    "model": "maskrcnn (boxes and masks) | fasterrcnn (boxes)",
    "norm": "bn (trained, per process) | frozen (FrozenBatchNorm) | syncbn (torchrun on CUDA); default: syncbn "
            "under torchrun on CUDA, bn otherwise (the paper trains BN: MoCo's features have other scales)",
    "epochs": "training epochs", "batch_size": "images per step, over all processes",
    "lr": "learning rate (default 0.02 x batch/16)",
    "lr_decay": "layer-wise lr decay over a ViT backbone: block i of L trains at lr x d^(L-i), the patch "
                "embedding at lr x d^(L+1), the pyramid and heads at lr (ViTDet fine-tunes with 0.7-0.8; 1 = off)",
    "momentum": "SGD momentum", "weight_decay": "weight decay",
    "warmup_iters": "linear warm-up steps", "train_json": "COCO annotations of the training images",
    "train_images": "folder of the training images", "val_json": "COCO annotations of the validation images",
    "val_images": "folder of the validation images",
    "image_size": "short side the images are resized to (default: the scenes' canvas, else 800)",
    "fpn_channels": "feature pyramid channels (default: half the last stage's, at most 256)",
    "arch": "architecture for SOURCE=random (a ResNet, or a ViT)",
    "width": "base width for SOURCE=random",
    "stem": "stem for random (default small-s2), or the stride of a state_dict's 3x3 stem (small | small-s2)",
    "in_channels": "input channels for SOURCE=random",
    "mean": "input mean per channel, e.g. 0.485,0.456,0.406 (default: the run's, else the training images')",
    "std": "input std per channel (default: as --mean)", "out": "output folder (default RUN_DIR/detect)",
    "resume": "auto (continue OUT/last.pt when it exists) | never", "eval_every": "evaluate every N epochs",
    "checkpoint_every": "checkpoint every N steps (and at each epoch's end)",
    "show": "validation images drawn into OUT/predictions.png (0: none)", "workers": "DataLoader workers",
    "seed": "random seed", "device": "auto | cpu | cuda | cuda:N", "progress": "progress bars",
}


def _detect(argv):
    from fastmoco.evaluate.detection import DetectSettings, run_detect
    from fastmoco.evaluate.detection.settings import CHOICES

    p = ArgumentParser(prog="fastmoco-detect", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a fastmoco run directory, a ResNet state_dict file, or 'random'")
    add_fields(p, DetectSettings, CHOICES, help=HELP)
    args = vars(p.parse_args(argv))
    run_detect(args.pop("source"), DetectSettings(**args))


def main(argv=None) -> int:
    return run_cli("fastmoco-detect", _detect, argv)


if __name__ == "__main__":
    raise SystemExit(main())
