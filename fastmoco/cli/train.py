"""fastmoco-train: MoCo v1/v2 pre-training (default: the fmnist recipe on the embedded Fashion-MNIST, CPU-sized)."""
from fastmoco.cli import run_cli


def _train(argv):
    from fastmoco.train import train
    from fastmoco.train.config import config_from_args

    train(config_from_args(argv))


def main(argv=None) -> int:
    return run_cli("fastmoco-train", _train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
