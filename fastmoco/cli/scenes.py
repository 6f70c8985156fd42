"""fastmoco-scenes OUT: draw the embedded detection set (Fashion-MNIST items on textured canvases) as COCO JSON +
PNGs: OUT/train.json, OUT/train/, OUT/val.json, OUT/val/. The same settings give the same files everywhere."""

from fastmoco.cli import ArgumentParser, run_cli


def _scenes(argv):
    from fastmoco.data.classes import select_classes
    from fastmoco.data.fmnist import CLASSES
    from fastmoco.data.scenes import SceneSpec, write_scenes
    from fastmoco.runs.config import FMNIST_DIR

    d = SceneSpec()
    p = ArgumentParser(prog="fastmoco-scenes", description=__doc__)
    p.add_argument("out", help="output folder (must be empty or absent)")
    p.add_argument("--train", type=int, default=d.train, help="training scenes (items from the training images)")
    p.add_argument("--val", type=int, default=d.val, help="validation scenes (items from the test images)")
    p.add_argument("--size", type=int, default=d.size, help="canvas side in pixels")
    p.add_argument("--items", type=int, nargs=2, default=d.items, metavar=("MIN", "MAX"), help="items per scene")
    p.add_argument("--scale", type=float, nargs=2, default=d.scale, metavar=("MIN", "MAX"),
                   help="item side as a multiple of 28 px")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--classes", default="", help="draw items of these classes only: comma-separated Fashion-MNIST "
                   "class names or indices (the categories keep their ids); default: all ten")
    p.add_argument("--fmnist", default=FMNIST_DIR, help="Fashion-MNIST folder")
    a = p.parse_args(argv)
    classes = tuple(select_classes(a.classes, CLASSES, "Fashion-MNIST")) if a.classes else ()
    spec = SceneSpec(a.train, a.val, a.size, tuple(a.items), tuple(a.scale), a.seed, classes)
    print(write_scenes(a.out, a.fmnist, spec))


def main(argv=None) -> int:
    return run_cli("fastmoco-scenes", _scenes, argv)


if __name__ == "__main__":
    raise SystemExit(main())
