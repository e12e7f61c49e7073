"""The locks of an index directory.  One writer per index: an exclusive, non-blocking flock on
`<db>/write.lock`; and one `recall heal` at a time (`<db>/heal.lock`, HealLock).

The kernel drops the lock when its process dies (even by kill -9), so a stale lock file never
blocks anyone; the pid written inside is only for the message.

A second long writer (`index`, `watch`, `heal`, `rebuild`) is refused at once with one line that
names the holder.  A query writing back refined rows holds the lock for a moment only: other
writers wait for it (up to SHORT_WRITER_WAIT_S) instead of failing, e.g. a cron `recall index`
that starts while a query finishes; the query itself never waits (it skips its write-back)."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from recall_cli.errors import RecallError, storage_error
from recall_cli.storage.layout import HEAL_LOCK, LOCK_NAME

SHORT_WRITERS = ("recall query ",)  # holders worth waiting for
SHORT_WRITER_WAIT_S = 10.0


class WriterLock:
    def __init__(self, db_dir: Path, purpose: str):
        self.path = db_dir / LOCK_NAME
        self.purpose = purpose
        self.handle = None

    def __enter__(self) -> WriterLock:
        try:
            handle = open(self.path, "a+")
        except OSError as error:  # read-only or full disk: one clear line, not a traceback
            raise (storage_error(error, self.path.parent) or error) from None
        deadline = time.monotonic() + SHORT_WRITER_WAIT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip()
                # "": taking or giving it back right now (the name is written after the flock)
                short = not holder or holder.startswith(SHORT_WRITERS)
                if short and self.purpose != "query" and time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                handle.close()
                raise RecallError(
                    f"the index at {self.path.parent} is being written by "
                    f"{holder or 'another process'}; wait for it to finish or use "
                    "another --db"
                ) from None
        try:  # the holder's name only serves the message above: a full disk must not stop here
            handle.seek(0)
            handle.truncate()
            handle.write(f"recall {self.purpose} (pid {os.getpid()})")
            handle.flush()
        except OSError:
            pass
        self.handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            try:
                self.handle.truncate(0)
            except OSError:
                pass
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            try:
                self.handle.close()
            except OSError:  # the unwritten holder name of a full disk
                pass
            self.handle = None


class HealLock:
    """Held while `recall heal` trains; a second heal is refused (training twice would only race)."""

    def __init__(self, db_dir: Path):
        self.path = Path(db_dir) / HEAL_LOCK
        self.handle = None

    def __enter__(self):
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise RecallError("another `recall heal` is running on this index; wait for it to finish") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
