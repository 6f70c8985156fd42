"""The run directory: claiming one for an imported run, and the lock a training run holds on its ``--out`` for its
lifetime. What a run directory holds: ``last.pt`` (and ``prev.pt``, the checkpoint before it), ``config.yaml``
(the resolved settings), ``metrics.csv``, ``.lock`` while a run trains in it, and ``export/`` once exported."""
import fcntl
import os

from fastmoco.errors import ConfigError, ConvertError

from .checkpoint import LAST


def claim_run_dir(out: str) -> None:
    """OUT made ready for an imported run: created, and refused if it already holds one."""
    if os.path.exists(os.path.join(out, LAST)):
        raise ConvertError(f"{out} already holds a run (last.pt); choose another OUT_DIR")
    os.makedirs(out, exist_ok=True)


class RunLock:
    """An exclusive lock on the run directory for the run's lifetime (released by the OS if the process dies),
    so two runs pointed at one ``--out`` cannot overwrite each other's checkpoints."""

    def __init__(self, out: str):
        self.path = os.path.join(out, ".lock")
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "unknown"
            self.fh.close()
            raise ConfigError(f"run directory {out} is in use by another run (pid {holder}); wait for it to "
                              "finish or choose another --out") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(str(os.getpid()))
        self.fh.flush()

    def release(self) -> None:
        if not self.fh.closed:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
