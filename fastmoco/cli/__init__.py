"""Command-line entry points. Expected failures print one line ``PROG: error: ...`` and exit 2; Ctrl-C at any
moment (even while torch is still being imported) prints one line and exits 130."""
import signal
import sys


def _expected_errors() -> tuple:
    from fastmoco.data import DataError
    from fastmoco.train import ConfigError, TrainingDiverged
    from fastmoco.train.checkpoint import CheckpointError

    return ConfigError, DataError, CheckpointError, TrainingDiverged, ValueError


def _os_error_line(exc: OSError) -> str:
    """``[Errno 28] No space left on device: 'x'`` as "No space left on device: x"."""
    what = exc.strerror or str(exc)
    return f"{what}: {exc.filename}" if exc.filename else what


def run_cli(prog: str, fn, argv=None) -> int:
    try:  # every import of torch happens inside: an early Ctrl-C is one line too
        fn(argv)
        return 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; files already written (checkpoints included) are kept", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - sorted below: expected ones are one line, the rest re-raised
        expected = _expected_errors()
        from fastmoco.train.state import RunStopped
        if isinstance(exc, RunStopped):  # SIGTERM / SIGINT: the checkpoint is written; exit as the signal would
            print(f"{prog}: {exc}", file=sys.stderr)
            return 128 + int(getattr(signal, exc.signame, signal.SIGTERM))
        if isinstance(exc, expected):
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, OSError):  # a full disk, a permission, a vanished file: the system's words, one line
            print(f"{prog}: error: {_os_error_line(exc)}", file=sys.stderr)
            return 2
        raise
