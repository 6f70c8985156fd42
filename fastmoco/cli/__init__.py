"""Command-line entry points. Expected failures print one line ``PROG: error: ...`` and exit 2; Ctrl-C at any
moment (even while torch is still being imported) prints one line and exits 130."""
import argparse
import signal
import sys

from fastmoco.errors import FastmocoError


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line too (``PROG: error: ...``, exit 2): the usage block is what
    ``--help`` is for."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_fields(parser, settings_cls, choices: dict, help: dict | None = None, keep_unset: bool = False) -> None:
    """The one generator of every command's flags: one ``--flag`` per field of a settings dataclass (``--no-flag``
    for booleans), typed from the field's annotation, with ``choices=`` from ``choices`` (each command's table,
    built from the owning modules' registries), the help from ``help`` or the field's metadata. ``keep_unset``: a
    flag not given sets nothing (fastmoco-train merges the flags over a YAML file, a run's settings and a preset),
    and the help names the field's default instead."""
    from dataclasses import MISSING, fields

    from fastmoco.runs.config import base_type

    for f in fields(settings_cls):
        text = (help or {}).get(f.name) or f.metadata.get("help", "")
        default = None if f.default is MISSING else f.default
        kw = dict(dest=f.name, help=f"{text} (default: {default})" if keep_unset else text)
        if not keep_unset:
            kw["default"] = default
        flag = "--" + f.name.replace("_", "-")
        if base_type(f) is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            allowed = choices.get(f.name)
            parser.add_argument(flag, type=base_type(f), choices=list(allowed) if allowed else None, **kw)


# printed as one line: fastmoco's own errors, and ValueError, which the ops and the models raise for bad arguments
# (they do not depend on the rest of the package, so they do not use its error classes)
EXPECTED = (FastmocoError, ValueError)


def _os_error_line(exc: OSError) -> str:
    """``[Errno 28] No space left on device: 'x'`` as "No space left on device: x"."""
    what = exc.strerror or str(exc)
    return f"{what}: {exc.filename}" if exc.filename else what


def _message(exc: Exception) -> str:
    """An expected error's message as one line. An error raised in a DataLoader worker comes back with the
    worker's traceback in its message ("Caught DataError in DataLoader worker process 0. Original Traceback
    ... DataError: <message>"): its last line holds the message."""
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    if "Original Traceback" in str(exc):
        last = lines[-1]
        name = type(exc).__name__ + ": "
        return last.split(name, 1)[1] if name in last else last
    return lines[0] if len(lines) == 1 else " ".join(ln.strip() for ln in lines)


def _say(line: str) -> None:
    """One line to stderr in one write: under torchrun every rank shares the terminal, and print's two writes
    (text, then newline) of two ranks interleave into one garbled line."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _import_torch_whole() -> None:
    """torch and the settings' registries (models, data with DALI, the ops' extension) imported with SIGINT held
    back: a Ctrl-C that lands inside torch's native initialisation can abort
    the process (a C++ exception through pybind11, exit -6) or kill it by the signal (-2) instead of raising
    KeyboardInterrupt. Held back, it is delivered when the import is done, as a KeyboardInterrupt."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        import torch  # noqa: F401

        # the settings and their registries: models, data (DALI, a native library too), the ops' extension
        import fastmoco.runs.config  # noqa: F401
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def run_cli(prog: str, fn, argv=None) -> int:
    try:  # every import of torch happens inside: an early Ctrl-C is one line too (--help too: its choices come
        # from the models' registries)
        _import_torch_whole()
        fn(argv)
        return 0
    except KeyboardInterrupt:
        _say(f"{prog}: interrupted; files already written (checkpoints included) are kept")
        return 130
    except Exception as exc:  # noqa: BLE001 - sorted below: expected ones are one line, the rest re-raised
        from fastmoco.train.state import RunStopped
        if isinstance(exc, RunStopped):  # SIGTERM / SIGINT: the checkpoint is written; exit as the signal would
            _say(f"{prog}: {exc}")
            return 128 + int(getattr(signal, exc.signame, signal.SIGTERM))
        if isinstance(exc, EXPECTED):
            _say(f"{prog}: error: {_message(exc)}")
            return 2
        if isinstance(exc, OSError):  # a full disk, a permission, a vanished file: the system's words, one line
            _say(f"{prog}: error: {_os_error_line(exc)}")
            return 2
        raise
