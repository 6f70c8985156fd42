"""Every error fastmoco raises for a user to read: one base class, one subclass per kind. The command-line entry
points print any of them as one line (``PROG: error: ...``) and exit 2; anything else is a bug and keeps its
traceback. This module imports nothing, so every layer (data, models, runs, the commands) can raise them."""


class FastmocoError(Exception):
    """Base of the errors a command prints as one line."""


class ConfigError(FastmocoError, ValueError):
    """Settings that cannot work together (or at all): a flag, a YAML field, a run directory that does not fit."""


class DataError(FastmocoError, ValueError):
    """Missing, empty or unreadable data."""


class CheckpointError(FastmocoError, RuntimeError):
    """A checkpoint that cannot be read or written, or does not fit this run."""


class UnsafeCheckpoint(CheckpointError):
    """A file whose unpickling would build arbitrary objects: refused, never a reason to fall back to prev.pt
    (someone wrote it there)."""


class ConvertError(FastmocoError, ValueError):
    """A checkpoint that cannot be converted to or from another code's layout."""


class TrainingDiverged(FastmocoError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def check_choice(name: str, value, allowed, optional: bool = False) -> None:
    """The one refusal of a value outside its fixed set: ``unknown NAME VALUE; choose one of [...]``.
    ``optional``: None is allowed too (a setting filled in later)."""
    if not (value in allowed or (optional and value is None)):
        raise ConfigError(f"unknown {name} {value!r}; choose one of {list(allowed)}")
