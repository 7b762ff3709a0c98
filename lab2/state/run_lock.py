"""One writer per run folder: the main process of a run holds an exclusive flock on `<run>/.lab2-run.lock`.

The lock is held for the run's life and released by the OS if that process dies, so a killed run never leaves
a stale lock. A second lab2 process that would write into the same folder is refused in one line.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from lab2.errors import UserError

# Held (fcntl.flock) by the one process writing the run, for the run's life; the OS drops it when that process
# dies, so a killed run never leaves a stale lock. Never deleted: a new file would let a second writer in.
LOCK = ".lab2-run.lock"


def _another_writer(root: Path) -> UserError:
    return UserError(
        f"another lab2 process is writing to {root} (it holds {root / LOCK}); two runs in one folder would mix "
        "their metrics and checkpoints. Wait for it to finish or stop it (Ctrl-C saves a checkpoint), "
        "or choose another --output_dir."
    )


def refuse_if_locked(root: str | Path) -> None:
    """Read-only check: a UserError when a running lab2 process holds `root`'s lock (a shared probe, released)."""
    lock_file = Path(root) / LOCK
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return  # no lock file: no run has written there yet (or it is unreadable; the real lock will tell)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _another_writer(Path(root)) from None
    finally:
        os.close(fd)  # closing releases the probe


class RunFolderLock:
    """The exclusive lock of one run folder, taken by the main process before it writes anything there."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._fd: int | None = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise _another_writer(self.root) from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
