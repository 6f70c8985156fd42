"""``python -m fastmoco.detect RUN_DIR``: the same as ``fastmoco-detect`` (torchrun-friendly)."""
from fastmoco.cli.detect import main

if __name__ == "__main__":
    raise SystemExit(main())
