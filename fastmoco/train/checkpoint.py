"""Atomic, verified checkpoints. A save writes a temporary file in the same folder, fsyncs it, moves the current
checkpoint to ``prev.pt`` and renames the new one into place, so a crash mid-write leaves a whole checkpoint.
Before use, every member of the archive is checked against the CRC-32 the zip format stores (``torch.load``
alone accepts flipped bytes in tensor data); a corrupt ``last.pt`` falls back to ``prev.pt`` with a warning."""
import glob
import os
import pickle
import random
import warnings
import zipfile

import numpy as np
import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit this run; the CLI prints it as one line."""


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


LAST, PREVIOUS = "last.pt", "prev.pt"  # the run directory's checkpoint and the one before it


def checkpoint_path(out: str) -> str:
    return os.path.join(out, LAST)


def _previous(path: str) -> str:
    return os.path.join(os.path.dirname(path) or ".", PREVIOUS)


def save_atomic(obj, path: str, keep_previous: bool = False) -> None:
    """Write ``obj`` to ``path`` atomically; with ``keep_previous`` the checkpoint it replaces becomes prev.pt."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    if keep_previous and os.path.isfile(path):
        os.replace(path, _previous(path))
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the renames themselves survive a power cut
    finally:
        os.close(dir_fd)


def remove_stale_temporaries(folder: str) -> list[str]:
    """Temporary files of writes that were killed (call only while holding the run's lock)."""
    stale = glob.glob(os.path.join(folder, "*.pt.tmp.*"))
    for f in stale:
        os.remove(f)
    return stale


def verify(path: str) -> str | None:
    """None if every member of the checkpoint archive matches its stored CRC-32, else what is wrong."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        return f"not a readable checkpoint archive ({exc})"
    return None if bad is None else f"checksum mismatch in {bad}"


def _load_one(path: str) -> dict:
    problem = verify(path)
    if problem:
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({problem})")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({first})") from None
    keys = set(ckpt if isinstance(ckpt, dict) else {})
    # an import (fastmoco-convert) holds weights and settings only; a training checkpoint its whole state
    missing = ({"model", "config"} if "imported" in keys else {"model", "optimizer", "epoch"}) - keys
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(sorted(missing))}: not a fastmoco checkpoint")
    return ckpt


def load(path: str, fallback: bool = False) -> dict:
    """A verified checkpoint; with ``fallback``, a corrupt one gives way to prev.pt beside it (one warning)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return _load_one(path)
    except CheckpointError as exc:
        prev = _previous(path)
        if not (fallback and os.path.isfile(prev)):
            raise
        warnings.warn(f"{exc}; resuming from the previous checkpoint {prev}", stacklevel=2)
        return _load_one(prev)


def resolve_resume(resume: str | None, out: str) -> str | None:
    """'auto' -> OUT/last.pt when it exists (or prev.pt when a crash came between its two renames; else a fresh
    start); a path must exist."""
    if not resume:
        return None
    if resume == "auto":
        for name in (LAST, PREVIOUS):
            if os.path.isfile(os.path.join(out, name)):
                return os.path.join(out, name)
        return None
    if not os.path.isfile(resume):
        raise CheckpointError(f"--resume: checkpoint not found: {resume}")
    return resume
