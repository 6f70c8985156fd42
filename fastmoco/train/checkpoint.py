"""Atomic checkpoints: write to a temporary file in the same folder, fsync, then rename over the old one, so a
crash mid-write leaves the previous checkpoint whole. Holds everything an exact resume needs."""
import os
import pickle
import random
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


def save_atomic(obj, path: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load(path: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({first})") from None
    missing = {"model", "optimizer", "epoch"} - set(ckpt if isinstance(ckpt, dict) else {})
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(sorted(missing))}: not a fastmoco checkpoint")
    return ckpt


def resolve_resume(resume: str | None, out: str) -> str | None:
    """'auto' -> OUT/last.pt when it exists (else a fresh start); a path must exist."""
    if not resume:
        return None
    if resume == "auto":
        path = os.path.join(out, "last.pt")
        return path if os.path.isfile(path) else None
    if not os.path.isfile(resume):
        raise CheckpointError(f"--resume: checkpoint not found: {resume}")
    return resume
