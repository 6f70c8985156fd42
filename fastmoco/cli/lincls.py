"""fastmoco-lincls RUN_DIR: the linear classification protocol on a run's frozen backbone (top-1 / top-5).

  fastmoco-lincls runs/fastmoco                       # fast protocol on Fashion-MNIST (86 s on 2 cores)
  fastmoco-lincls runs/in1k --val /imagenet/val       # the paper's protocol (official: lr 30, 100 epochs)
  torchrun --nproc_per_node=8 -m fastmoco.lincls runs/in1k --val /imagenet/val
  fastmoco-lincls runs/imported --data /imagenet/train --val /imagenet/val --knn
"""
import argparse

from fastmoco.cli import ArgumentParser, add_fields, run_cli

HELP = {
    "protocol": "official (the paper's protocol of the run's method: MoCo v1/v2's, or v3's for ResNets / ViTs) | "
                "v3 | v3-vit | fast (default: fast on Fashion-MNIST, official otherwise)",
    "epochs": "classifier epochs (default: the protocol's: 100, 90 for v3)",
    "lr": "learning rate (default: the protocol's: 30 official v1/v2, 0.4 v3, 12 v3-vit, 0.1 fast)",
    "batch_size": "batch size (default: the protocol's: 256, 1024 for v3)",
    "data": "labelled training images (default: the run's --data)",
    "val": "labelled evaluation ImageFolder (default: the run's --val, or Fashion-MNIST's test set)",
    "subset": "train on the first N images only (0 = all)",
    "checkpoint": "checkpoint to evaluate (default: RUN_DIR/last.pt)",
    "out": "output folder (default: RUN_DIR/lincls)",
    "knn": "also report the kNN monitor's accuracy (k and t of the run)",
    "workers": "DataLoader workers",
    "seed": "random seed",
    "device": "auto | cpu | cuda | cuda:N",
    "progress": "progress bars",
}


def _lincls(argv):
    from fastmoco.evaluate.lincls import PROTOCOL_CHOICES, LinclsSettings, run_lincls

    p = ArgumentParser(prog="fastmoco-lincls", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a fastmoco run directory (trained or imported) or a checkpoint file")
    add_fields(p, LinclsSettings, {"protocol": PROTOCOL_CHOICES}, help=HELP)
    args = vars(p.parse_args(argv))
    run_lincls(args.pop("run_dir"), LinclsSettings(**args))


def main(argv=None) -> int:
    return run_cli("fastmoco-lincls", _lincls, argv)


if __name__ == "__main__":
    raise SystemExit(main())
