"""One process per run folder: an advisory lock that the kernel drops when its holder dies.

The lock is `flock` on `<run folder>/lock`, a file that holds the holder's PID while it runs. A
second process on the same folder fails at once with that PID named. A process that was killed
(SIGKILL, a crashed node) cannot release anything, but the kernel releases its flock, so its lock
is stale by construction: the next process takes it over, and says so when the file still names a
process that is no longer running. The file is emptied, never deleted, on release: deleting it
would let a process that opened the old file and one that creates a new one both hold a lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


class RunLocked(RuntimeError):
    """Another live process holds the run folder. The message names it."""


class RunLock:
    """`with RunLock(run_dir):` holds the run folder's lock for the block."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "lock"
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "(starting)"
            os.close(fd)
            raise RunLocked(f"{self.path.parent} is in use by process {holder} (lock file "
                            f"{self.path}); wait for it to finish or stop that process") from None
        previous = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if previous:
            log.warning("taking over the lock of process %s, which is no longer running", previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None
