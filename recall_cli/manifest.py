"""The file manifest: one SQLite row per file seen (path, size, mtime, hash, status).

Why SQLite beside LanceDB: an unchanged re-index must cost only a `stat` per file, and importing
lancedb alone takes ~1.1 s here.  The manifest answers "what changed?" with the standard library,
so a run with nothing to do never imports lancedb or torch.  The vectors and per-unit rows live in
LanceDB (store.py).  Writes go to LanceDB first and to the manifest second, so after a crash the
manifest can only be *behind*, and the next run redoes that file (finding its rows already there).

Schema changes are an ordered list of small migrations; `PRAGMA user_version` records how many ran.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import RecallError

MANIFEST_NAME = "manifest.sqlite"

MIGRATIONS: list[str] = [
    # 1: files and key/value metadata (model name and version, embedding dim, times)
    """
    CREATE TABLE files (
        path TEXT PRIMARY KEY,
        root TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        hash TEXT,
        modality TEXT,
        status TEXT NOT NULL,          -- ok | error | skipped
        error TEXT,
        units INTEGER NOT NULL DEFAULT 0,
        indexed_at REAL NOT NULL
    );
    CREATE INDEX files_hash ON files(hash);
    CREATE INDEX files_root ON files(root);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 2: early exit (issue 4): per file and exit block, how many units stopped there, how many are
    # refined, and their INT4 cache entries; `stats` and the cache budget read this, not LanceDB
    """
    CREATE TABLE unit_exits (
        path TEXT NOT NULL,
        modality TEXT,
        exit_block INTEGER NOT NULL,   -- blocks the units really ran at index time
        depth INTEGER NOT NULL,
        units INTEGER NOT NULL,
        refined INTEGER NOT NULL,      -- of those units, how many hold their full-depth embedding
        cache_units INTEGER NOT NULL,  -- units with an INT4 cache entry
        cache_bytes INTEGER NOT NULL,
        PRIMARY KEY (path, exit_block)
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class FileRecord:
    path: str
    root: str
    size: int
    mtime_ns: int
    hash: str | None
    modality: str | None
    status: str
    error: str | None
    units: int


class Manifest:
    def __init__(self, db_dir: Path, create: bool = True):
        self.path = db_dir / MANIFEST_NAME
        if not create and not self.path.exists():
            raise RecallError(f"no index at {db_dir}; run `recall index PATH` first")
        self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RecallError(
                f"index at {self.path.parent} was made by a newer recall (schema {version} > "
                f"{SCHEMA_VERSION}); upgrade recall or use another --db")
        for number in range(version, SCHEMA_VERSION):
            with self.transaction():
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version = {number + 1}")

    def transaction(self):
        return _Transaction(self.conn)

    def close(self) -> None:
        self.conn.close()

    # --- metadata ---------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO meta(key, value) VALUES(?, ?) "
                          "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    # --- files --------------------------------------------------------------------------
    def files_under(self, roots: list[str]) -> dict[str, FileRecord]:
        """Every recorded file inside any of the roots, by path."""
        found: dict[str, FileRecord] = {}
        for root in roots:
            prefix = root.rstrip("/") + "/"
            rows = self.conn.execute(
                "SELECT path, root, size, mtime_ns, hash, modality, status, error, units FROM files "
                "WHERE substr(path, 1, ?) = ?", (len(prefix), prefix))
            for row in rows:
                found[row[0]] = FileRecord(*row)
        return found

    def records(self, paths: list[str]) -> dict[str, FileRecord]:
        """The recorded files among `paths`, by path."""
        found: dict[str, FileRecord] = {}
        for start in range(0, len(paths), 500):
            chunk = paths[start:start + 500]
            rows = self.conn.execute(
                "SELECT path, root, size, mtime_ns, hash, modality, status, error, units FROM files "
                f"WHERE path IN ({', '.join('?' * len(chunk))})", chunk)
            for row in rows:
                found[row[0]] = FileRecord(*row)
        return found

    def paths_with_hash(self, content_hash: str) -> list[str]:
        rows = self.conn.execute("SELECT path FROM files WHERE hash = ? AND status = 'ok'", (content_hash,))
        return [row[0] for row in rows]

    def upsert(self, records: list[FileRecord]) -> None:
        now = time.time()
        self.conn.executemany(
            "INSERT INTO files(path, root, size, mtime_ns, hash, modality, status, error, units, indexed_at) "
            "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET root=excluded.root, "
            "size=excluded.size, mtime_ns=excluded.mtime_ns, hash=excluded.hash, modality=excluded.modality, "
            "status=excluded.status, error=excluded.error, units=excluded.units, indexed_at=excluded.indexed_at",
            [(r.path, r.root, r.size, r.mtime_ns, r.hash, r.modality, r.status, r.error, r.units, now)
             for r in records])
        self.conn.executemany("DELETE FROM unit_exits WHERE path = ?",  # no rows left: no exits
                              [(r.path,) for r in records if r.status != "ok"])

    def delete(self, paths: list[str]) -> None:
        self.conn.executemany("DELETE FROM files WHERE path = ?", [(path,) for path in paths])
        self.conn.executemany("DELETE FROM unit_exits WHERE path = ?", [(path,) for path in paths])

    # --- early exit bookkeeping (issue 4) ---------------------------------------------------
    def set_exits(self, path: str, modality: str | None, groups: list[tuple[int, int, int, int, int, int]]) -> None:
        """Replace a file's exit records: groups of (exit_block, depth, units, refined,
        cache_units, cache_bytes)."""
        self.conn.execute("DELETE FROM unit_exits WHERE path = ?", (path,))
        self.conn.executemany(
            "INSERT INTO unit_exits(path, modality, exit_block, depth, units, refined, cache_units, cache_bytes) "
            "VALUES(?, ?, ?, ?, ?, ?, ?, ?)", [(path, modality, *group) for group in groups])

    def exit_summary(self) -> list[tuple]:
        """(modality, exit_block, depth, units, refined, cache_units, cache_bytes) summed over files."""
        return list(self.conn.execute(
            "SELECT modality, exit_block, depth, sum(units), sum(refined), sum(cache_units), sum(cache_bytes) "
            "FROM unit_exits GROUP BY modality, exit_block, depth ORDER BY modality, exit_block"))

    def cache_groups(self) -> list[tuple]:
        """(path, exit_block, depth, cache_bytes, indexed_at) of every group holding cache bytes."""
        return list(self.conn.execute(
            "SELECT e.path, e.exit_block, e.depth, e.cache_bytes, f.indexed_at FROM unit_exits e "
            "JOIN files f ON f.path = e.path WHERE e.cache_bytes > 0"))

    def release_cache_groups(self, groups: list[tuple[str, int]]) -> None:
        self.conn.executemany("UPDATE unit_exits SET cache_units = 0, cache_bytes = 0 "
                              "WHERE path = ? AND exit_block = ?", groups)

    def counts(self) -> dict:
        """Files by status and by modality, and units by modality (for `stats`)."""
        by_status = dict(self.conn.execute("SELECT status, count(*) FROM files GROUP BY status"))
        by_modality = {}
        for modality, files, units in self.conn.execute(
                "SELECT modality, count(*), sum(units) FROM files WHERE status = 'ok' GROUP BY modality"):
            by_modality[modality] = {"files": files, "units": units or 0}
        roots = [row[0] for row in self.conn.execute("SELECT DISTINCT root FROM files ORDER BY root")]
        return {"by_status": by_status, "by_modality": by_modality, "roots": roots}

    def failures(self, limit: int = 20) -> list[tuple[str, str]]:
        rows = self.conn.execute("SELECT path, error FROM files WHERE status = 'error' ORDER BY path LIMIT ?",
                                 (limit,))
        return [(path, error) for path, error in rows]


class _Transaction:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind, value, traceback):
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")
        return False
