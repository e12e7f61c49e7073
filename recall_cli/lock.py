"""One writer per index: an exclusive, non-blocking flock on `<db>/write.lock`.

The kernel drops the lock when its process dies (even by kill -9), so a stale lock file never
blocks anyone; the pid written inside is only for the message."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import RecallError

LOCK_NAME = "write.lock"


class WriterLock:
    def __init__(self, db_dir: Path, purpose: str):
        self.path = db_dir / LOCK_NAME
        self.purpose = purpose
        self.handle = None

    def __enter__(self) -> "WriterLock":
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RecallError(f"the index at {self.path.parent} is being written by {holder}; "
                              "wait for it to finish or use another --db") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"recall {self.purpose} (pid {os.getpid()})")
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.truncate(0)
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None
