"""fastmoco-export RUN_DIR: the trained backbone as a state_dict and as a torch.export feature extractor."""

from fastmoco.cli import ArgumentParser, run_cli


def _export(argv):
    from fastmoco.convert.extractor import export_run

    p = ArgumentParser(prog="fastmoco-export", description=__doc__)
    p.add_argument("run_dir", help="a fastmoco-train run directory (holds config.yaml and last.pt)")
    p.add_argument("--checkpoint", help="checkpoint to export (default: RUN_DIR/last.pt)")
    args = p.parse_args(argv)
    for path in export_run(args.run_dir, args.checkpoint).values():
        print(path)


def main(argv=None) -> int:
    return run_cli("fastmoco-export", _export, argv)


if __name__ == "__main__":
    raise SystemExit(main())
