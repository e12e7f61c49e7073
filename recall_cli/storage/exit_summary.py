"""The manifest's exit summary (Manifest.exit_summary), kept across the queries of a warm process.

Every query splits the rows into exit groups by this summary (early_exit/candidates.py), and the
GROUP BY behind it costs about 50 ms at 100,000 files: a warm process (the query server, `recall
watch`, a batch of queries) keeps it, and reads it again only when the manifest has changed:

* a commit by any other connection (an index run, a write-back, another process) changes SQLite's
  `PRAGMA data_version` on this one, which itself only reads;
* a rebuild or removal of the index replaces the manifest file: its inode changes (or it is
  gone), and the file is opened again (or the RecallError of a missing index is raised).

One lock guards the connection: the query server answers on more than one thread.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from recall_cli.storage.layout import MANIFEST_NAME


class ExitSummary:
    def __init__(self, db_dir: Path):
        self.db_dir = Path(db_dir)
        self._lock = threading.Lock()
        self._manifest = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of the open manifest file
        self._version: int | None = None  # PRAGMA data_version when the summary was read
        self._summary: list[tuple] | None = None
        self.reads = 0  # GROUP BYs run (tests check that a warm query needs none)

    def get(self) -> list[tuple]:
        """The current exit summary (modality, exit block, depth, units, refined, cache units, cache bytes)."""
        with self._lock:
            identity = _identity(self.db_dir / MANIFEST_NAME)
            if self._manifest is None or identity != self._identity:
                self._open(identity)
            version = self._manifest.conn.execute("PRAGMA data_version").fetchone()[0]
            if self._summary is None or version != self._version:
                # read after the version: a commit in between makes the next call read it again
                self._summary, self._version = self._manifest.exit_summary(), version
                self.reads += 1
            return self._summary

    def _open(self, identity: tuple[int, int] | None) -> None:
        from recall_cli.storage.manifest import Manifest

        self.close_unlocked()
        self._manifest = Manifest(self.db_dir, create=False, any_thread=True)  # raises when the index is gone
        self._identity = identity

    def close(self) -> None:
        with self._lock:
            self.close_unlocked()

    def close_unlocked(self) -> None:
        if self._manifest is not None:
            self._manifest.close()
        self._manifest, self._summary, self._version = None, None, None


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino
