"""``python -m fastmoco.lincls RUN_DIR``: the same as ``fastmoco-lincls`` (torchrun-friendly)."""
from fastmoco.cli.lincls import main

if __name__ == "__main__":
    raise SystemExit(main())
