"""fastmoco-shards SRC OUT: an ImageFolder (or a text file listing images, one `PATH [CLASS]` per line) as shuffled
WebDataset tar shards with DALI index files and a manifest, for `fastmoco-train --data OUT`.

  fastmoco-shards /data/imagenet/train /data/in1k-shards --max-count 1000
  fastmoco-shards files.txt /data/my-shards --max-size 500MB

Every image is decoded first; the ones that do not decode (or that DALI cannot read) are listed in
OUT/rejected.txt and not written. Re-running after an interruption keeps the finished shards.
"""
import argparse
import re

from fastmoco.cli import ArgumentParser, run_cli

UNITS = {"": 1, "B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def size_bytes(text: str) -> int:
    """'500MB' / '1GB' / '123456' as bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?B?)\s*", text.upper())
    if not m or m.group(2) not in UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1GB, 500MB, 1048576)")
    return int(float(m.group(1)) * UNITS[m.group(2)])


def _shards(argv):
    from fastmoco.data.shards import convert

    p = ArgumentParser(prog="fastmoco-shards", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="ImageFolder root (SRC/CLASS/IMAGE) or a text file of image paths")
    p.add_argument("out", help="folder for the shards, their indexes and manifest.json")
    p.add_argument("--max-count", type=int, default=1000, help="samples per shard, at most")
    p.add_argument("--max-size", type=size_bytes, default="1GB", help="bytes per shard, at most (e.g. 500MB)")
    p.add_argument("--seed", type=int, default=0, help="the shuffle's seed")
    p.add_argument("--workers", type=int, default=0, help="processes (0 = one per CPU core)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    args = p.parse_args(argv)
    done = convert(args.src, args.out, args.max_count, args.max_size, args.seed, args.workers, args.progress)
    kept = f" ({done['kept']} kept from an earlier run)" if done["kept"] else ""
    classes = f", {len(done['classes'])} classes" if done["classes"] else ""
    print(f"{done['samples']} images in {len(done['shards'])} shard(s){kept}{classes}; {done['rejected']} rejected "
          f"-> {args.out}/manifest.json")


def main(argv=None) -> int:
    return run_cli("fastmoco-shards", _shards, argv)


if __name__ == "__main__":
    raise SystemExit(main())
