"""fastmoco-train: MoCo v1/v2/v3 pre-training (default: the fmnist recipe on the embedded Fashion-MNIST, CPU-sized).

Its flags are generated from ``TrainConfig``: one ``--flag-name`` per field. Precedence: the dataclass defaults <
the preset < the run that --resume / --init names (for the fields left unset) < ``--config FILE.yaml`` < flags."""
import argparse

from fastmoco.cli import ArgumentParser, run_cli


def build_parser(prog: str = "fastmoco-train") -> argparse.ArgumentParser:
    """argparse generated from TrainConfig (``fastmoco.cli.add_fields``): one ``--flag-name`` per field, its
    choices from the registries (``runs.config.CHOICES``), defaults shown from the dataclass."""
    from fastmoco.cli import add_fields
    from fastmoco.runs.config import CHOICES, TrainConfig

    p = ArgumentParser(prog=prog, description="Train MoCo v1/v2 or v3 (default: v2 on Fashion-MNIST, "
                       "CPU-sized).",
                       argument_default=argparse.SUPPRESS)
    p.add_argument("--config", help="YAML file of TrainConfig fields (flags override it)")
    add_fields(p, TrainConfig, CHOICES, keep_unset=True)
    return p


def config_from_args(argv=None):
    """The resolved TrainConfig the command line (and its --config YAML, --resume and --init) describe."""
    from fastmoco.runs.config import TrainConfig
    from fastmoco.runs.read import settings_from_runs

    args = vars(build_parser().parse_args(argv))
    overrides = TrainConfig.from_yaml(args.pop("config")) if "config" in args else {}
    overrides.update(args)
    return TrainConfig(**{**settings_from_runs(overrides), **overrides}).resolved()


def _train(argv):
    from fastmoco.train import train

    train(config_from_args(argv))


def main(argv=None) -> int:
    return run_cli("fastmoco-train", _train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
