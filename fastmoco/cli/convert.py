"""fastmoco-convert: official MoCo checkpoints in, torchvision / detectron2 / timm / MoCo v3 weights out.

  fastmoco-convert import CKPT OUT_DIR            official MoCo v1/v2/v3 (ResNet, v3 ViT) -> a fastmoco run directory
  fastmoco-convert import CKPT backbone.pth       ... or only the backbone (torchvision key names)
  fastmoco-convert torchvision RUN_DIR out.pth    a torchvision ResNet state_dict (everything but fc)
  fastmoco-convert detectron2 RUN_DIR out.pkl     detectron2 weights (the official MoCo conversion's key names)
  fastmoco-convert timm RUN_DIR out.pth           a timm state_dict (ViTs, timm:NAME runs, ResNets); prints the
                                                  timm.create_model(...) call that loads it
  fastmoco-convert moco-v3 RUN_DIR out.pth.tar    a v3 run in the original MoCo v3 layout (its main_lincls.py
                                                  --pretrained reads it; its main_moco.py --resume does not: that
                                                  also needs its optimizer and scaler states)
"""
import argparse

from fastmoco.cli import ArgumentParser, run_cli


def _convert(argv):
    from fastmoco.convert import export_v3, import_official, timm_export, to_detectron2, to_torchvision
    from fastmoco.models.shape import describe

    p = ArgumentParser(prog="fastmoco-convert", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="official MoCo checkpoint -> fastmoco run directory (or backbone .pt/.pth)")
    imp.add_argument("checkpoint")
    imp.add_argument("out", help="run directory to create, or a .pt/.pth file for the backbone alone")
    for name, what in (("torchvision", "torchvision ResNet state_dict (.pth)"), ("detectron2", "detectron2 .pkl"),
                       ("timm", "timm state_dict (.pth)"),
                       ("moco-v3", "the original MoCo v3 checkpoint layout (v3 runs)")):
        exp = sub.add_parser(name, help=f"a run's backbone -> {what}")
        exp.add_argument("run_dir", help="a fastmoco run directory (trained or imported)")
        exp.add_argument("out")
    args = p.parse_args(argv)
    if args.command == "import":
        summary = import_official(args.checkpoint, args.out)
        print(f"{summary['format']}: {describe(summary)}, head {summary['head']} -> {args.out}")
    elif args.command == "timm":
        out, call = timm_export(args.run_dir, args.out)
        print(f"{out}  (load with {call}.load_state_dict(torch.load(path)))")
    else:
        export = {"torchvision": to_torchvision, "detectron2": to_detectron2, "moco-v3": export_v3}[args.command]
        print(export(args.run_dir, args.out))


def main(argv=None) -> int:
    return run_cli("fastmoco-convert", _convert, argv)


if __name__ == "__main__":
    raise SystemExit(main())
