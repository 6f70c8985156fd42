"""Atomic, verified, safe checkpoints. A save writes a temporary file in the same folder, fsyncs it, moves the
current checkpoint to ``prev.pt`` and renames the new one into place, so a crash mid-write leaves a whole
checkpoint; a write that fails (a full disk, a file-size limit) removes its temporary file and says why in one
line. Before use, every member of the archive is checked against the CRC-32 the zip format stores (``torch.load``
alone accepts flipped bytes in tensor data); a corrupt ``last.pt`` falls back to ``prev.pt`` with a warning.

Every weights file fastmoco reads (its own checkpoints, ``--init`` files, downloads to convert) is unpickled with
``weights_only=True``: tensors, plain containers and numbers, plus the only other type fastmoco's checkpoints hold,
numpy's RNG state (an ndarray). A file that would build any other Python object when loaded, which is how a
pickle runs code, is refused before anything of it is created."""
import errno
import glob
import os
import pickle
import random
import re
import warnings
import zipfile
from dataclasses import asdict

import numpy as np
import torch

from fastmoco.errors import CheckpointError, UnsafeCheckpoint


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


def _allowed_globals() -> list:
    """What fastmoco's checkpoints hold beyond tensors and plain containers: numpy's legacy RNG state, a tuple
    with a uint32 ndarray (pickled as an ndarray, its dtype and the dtype's class)."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 moved numpy.core to numpy._core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


# what torch's restricted unpickler names when it meets anything else: "Unsupported global: GLOBAL os.system",
# or "Can only build Tensor, ... but got <class 'x.Y'>"
# (an "Unsupported operand" is no pickle at all: the caller's "not a checkpoint")
_UNSAFE = re.compile(r"Unsupported global: GLOBAL ([\w.]+)|but got <class '([\w.]+)'>")


def safe_load(path: str, error=None):
    """``torch.load`` with ``weights_only=True`` (see the module's docstring). A refused file raises ``error``
    (default UnsafeCheckpoint) naming the type it asked for; other failures are torch's own exceptions."""
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _UNSAFE.search(str(exc))
        if not found:
            raise
        name = found.group(1) or found.group(2)
        raise (error or UnsafeCheckpoint)(
            f"refused to load {path}: unpickling it would call or build {name}, which no weights file needs (that "
            "is how a pickle runs code); load only files from sources you trust") from None


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: itself, or the one torch's writer turned into "unexpected pos"."""
    while exc is not None and not isinstance(exc, OSError):
        exc = exc.__cause__ or exc.__context__
    return exc


LAST, PREVIOUS = "last.pt", "prev.pt"  # the run directory's checkpoint and the one before it


def checkpoint_path(out: str) -> str:
    return os.path.join(out, LAST)


def _previous(path: str) -> str:
    return os.path.join(os.path.dirname(path) or ".", PREVIOUS)


def _temporary(path: str) -> str:
    """A temporary name beside ``path`` that holds nothing but, at most, a stale file of an earlier write (a
    directory or link someone made under that name is passed over, never written through or removed)."""
    base = f"{path}.tmp.{os.getpid()}"
    for n in range(100):
        tmp = base if n == 0 else f"{base}.{n}"
        if not os.path.lexists(tmp) or (os.path.isfile(tmp) and not os.path.islink(tmp)):
            return tmp
    raise CheckpointError(f"cannot write {path}: {base} and 99 further temporary names beside it are taken")


def save_atomic(obj, path: str, keep_previous: bool = False) -> None:
    """Write ``obj`` to ``path`` atomically; with ``keep_previous`` the checkpoint it replaces becomes prev.pt.
    A failed write (no space left, file too large, no permission, ``path`` a directory) leaves ``path`` as it was,
    removes its temporary file and raises CheckpointError naming the cause and the path."""
    if os.path.isdir(path):
        raise CheckpointError(f"cannot write {path}: it is a directory; give a file name (or remove the directory)")
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if keep_previous and os.path.isfile(path):
            os.replace(path, _previous(path))
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        cause = _os_error(exc)
        if os.path.isfile(tmp):
            os.remove(tmp)
        if cause is None:
            raise
        what = cause.strerror or errno.errorcode.get(cause.errno, str(cause))
        raise CheckpointError(f"cannot write {path}: {what}; the file there (if any) is unchanged") from None
    dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the renames themselves survive a power cut
    finally:
        os.close(dir_fd)


def remove_stale_temporaries(folder: str) -> list[str]:
    """Temporary files of writes that were killed (call only while holding the run's lock)."""
    stale = [f for f in glob.glob(os.path.join(folder, "*.pt.tmp.*")) if os.path.isfile(f) and not os.path.islink(f)]
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
        ckpt = safe_load(path)
    except UnsafeCheckpoint:
        raise
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
        if isinstance(exc, UnsafeCheckpoint) or not (fallback and os.path.isfile(prev)):
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


def build_payload(model, optimizer, scaler, pos, cfg, requested: dict, data_meta: dict, world: int,
                  guard: dict | None = None) -> dict:
    """A training checkpoint's contents. ``config``: the settings the run used (device defaults filled in);
    ``requested_config``: before the device defaults, what a resume on other hardware starts from; ``guard``: the
    loss guard's state (its band, counters and the snapshot a rollback returns to), when the guard is on."""
    payload = dict(model=model.state_dict(), optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
                   epoch=pos.epoch, position=asdict(pos), rng=rng_state(), config=cfg.to_dict(),
                   requested_config=requested, data=data_meta, world_size=world)
    if guard is not None:
        payload["guard"] = guard
    return payload


def imported_payload(model_state: dict, cfg, data_meta: dict, imported: dict) -> dict:
    """A checkpoint of weights brought in from elsewhere (fastmoco-convert import): the model and the settings
    that describe it, no optimizer or position (it starts runs with --init, it does not resume)."""
    return dict(model=model_state, config=cfg.to_dict(), data=data_meta, imported=imported)
