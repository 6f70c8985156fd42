"""Command-line entry points. Expected failures print one line ``PROG: error: ...`` and exit 2."""
import signal
import sys


def run_cli(prog: str, fn, argv=None) -> int:
    from fastmoco.data import DataError
    from fastmoco.train import ConfigError, TrainingDiverged
    from fastmoco.train.checkpoint import CheckpointError
    from fastmoco.train.state import RunStopped

    try:
        fn(argv)
        return 0
    except (ConfigError, DataError, CheckpointError, TrainingDiverged, ValueError, FileNotFoundError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except RunStopped as exc:  # SIGTERM / SIGINT: the checkpoint is written; exit as the signal would
        print(f"{prog}: {exc}", file=sys.stderr)
        return 128 + int(getattr(signal, exc.signame, signal.SIGTERM))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; the last finished epoch's checkpoint is kept (resume with --resume auto)",
              file=sys.stderr)
        return 130
