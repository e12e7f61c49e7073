"""The file manifest: one SQLite row per file seen (path, size, mtime, hash, status).

Why SQLite beside LanceDB: an unchanged re-index must cost only a `stat` per file, and importing
lancedb alone takes ~1.1 s here.  The manifest answers "what changed?" with the standard library,
so a run with nothing to do never imports lancedb or torch.  The vectors and per-unit rows live in
LanceDB (store.py).  Writes go to LanceDB first and to the manifest second, so after a crash the
manifest can only be *behind*, and the next run redoes that file (finding its rows already there).

Schema changes are an ordered list of small migrations (migrations.py); `PRAGMA user_version`
records how many ran.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from recall_cli.errors import REBUILD_HINT, RecallError, storage_error
from recall_cli.paths import real_path, stored_path
from recall_cli.storage.layout import MANIFEST_NAME, TABLE_DIR
from recall_cli.storage.migrations import (
    AFTER_MIGRATION,
    MEDIA_MODALITIES,
    MEDIA_TEXT_VERSION,
    MIGRATIONS,
    SCHEMA_VERSION,
    exit_groups,
)

__all__ = ["MEDIA_MODALITIES", "MEDIA_TEXT_VERSION", "MIGRATIONS", "SCHEMA_VERSION", "Manifest", "exit_groups"]


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
    text_version: int = MEDIA_TEXT_VERSION

    @property
    def stale_media_text(self) -> bool:
        """A media file last read before the current media text extraction (an older index)."""
        return self.modality in MEDIA_MODALITIES and self.text_version < MEDIA_TEXT_VERSION


class Manifest:
    def __init__(self, db_dir: Path, create: bool = True, any_thread: bool = False):
        """Open (or with `create`, make) the manifest of the index at db_dir, migrating an older
        schema.  Without `create`, a directory the caller cannot write is opened read-only (a
        query or `stats` on a read-only index).  Problems are one-line RecallErrors: no index, a
        newer or damaged manifest, vectors without a manifest, a full or read-only disk.
        `any_thread`: the connection may be used from other threads (the caller serialises them)."""
        db_dir = Path(db_dir)
        self.path = db_dir / MANIFEST_NAME
        self.read_only = False
        self._any_thread = any_thread
        table_there = (db_dir / TABLE_DIR).exists()
        if not self.path.exists():
            if table_there:
                raise RecallError(
                    f"the index at {db_dir} has vectors but no manifest ({MANIFEST_NAME} is missing); {REBUILD_HINT}"
                )
            if not create:
                raise RecallError(f"no index at {db_dir}; run `recall index PATH` first")
        self.conn = None
        try:
            self.conn = self._connect(db_dir, create)
            self._migrate()
            if table_there and self.get_meta("model") is None:
                raise RecallError(
                    f"the index at {db_dir} has vectors but its manifest does not know "
                    f"them (an empty {MANIFEST_NAME}); {REBUILD_HINT}"
                )
        except BaseException as error:
            if self.conn is not None:
                self.conn.close()
            if isinstance(error, sqlite3.DatabaseError):
                raise (storage_error(error, db_dir) or error) from None
            raise

    def _connect(self, db_dir: Path, create: bool) -> sqlite3.Connection:
        if not create and not os.access(db_dir, os.W_OK):
            self.read_only = True
            return _connect_read_only(self.path, self._any_thread)
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=not self._any_thread)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RecallError(
                f"the index at {self.path.parent} was made by a newer recall (schema {version} > "
                f"{SCHEMA_VERSION}); upgrade recall, or rebuild it for this version with "
                "`recall index --rebuild PATH...`, or use another --db"
            )
        if version < SCHEMA_VERSION and self.read_only:
            raise RecallError(
                f"the index at {self.path.parent} has an older format (schema {version} < {SCHEMA_VERSION}) "
                "that must be upgraded, but it is read-only: make it writable for one run of "
                "`recall stats`, after which read-only queries work again"
            )
        for number in range(version, SCHEMA_VERSION):
            with self.transaction():
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                if number + 1 in AFTER_MIGRATION:
                    AFTER_MIGRATION[number + 1](self)
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
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # --- files --------------------------------------------------------------------------
    def files_under(self, roots: list[str]) -> dict[str, FileRecord]:
        """Every recorded file inside any of the roots, by path."""
        found: dict[str, FileRecord] = {}
        for root in roots:
            # a range, not substr(): SQLite's string functions stop at NUL, which stored names may hold
            prefix = stored_path(root.rstrip("/") + "/")
            rows = self.conn.execute(
                f"SELECT {RECORD_COLUMNS} FROM files WHERE path >= ? AND path < ?",
                (prefix, prefix[:-1] + "0"),
            )
            for row in rows:
                record = _record(row)
                found[record.path] = record
        return found

    def records(self, paths: list[str]) -> dict[str, FileRecord]:
        """The recorded files among `paths`, by path."""
        found: dict[str, FileRecord] = {}
        for start in range(0, len(paths), 500):
            chunk = paths[start : start + 500]
            rows = self.conn.execute(
                f"SELECT {RECORD_COLUMNS} FROM files WHERE path IN ({', '.join('?' * len(chunk))})",
                [stored_path(path) for path in chunk],
            )
            for row in rows:
                record = _record(row)
                found[record.path] = record
        return found

    def paths_with_hash(self, content_hash: str) -> list[str]:
        rows = self.conn.execute("SELECT path FROM files WHERE hash = ? AND status = 'ok'", (content_hash,))
        return [real_path(row[0]) for row in rows]

    def upsert(self, records: list[FileRecord]) -> None:
        now = time.time()
        with self.transaction():  # a kill between the two statements would leave stale exit rows
            self._upsert(records, now)

    def _upsert(self, records: list[FileRecord], now: float) -> None:
        self.conn.executemany(
            "INSERT INTO files(path, root, size, mtime_ns, hash, modality, status, error, units, indexed_at, "
            "text_version) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
            "root=excluded.root, size=excluded.size, mtime_ns=excluded.mtime_ns, hash=excluded.hash, "
            "modality=excluded.modality, status=excluded.status, error=excluded.error, units=excluded.units, "
            "indexed_at=excluded.indexed_at, text_version=excluded.text_version",
            [
                (
                    stored_path(r.path),
                    stored_path(r.root),
                    r.size,
                    r.mtime_ns,
                    r.hash,
                    r.modality,
                    r.status,
                    r.error,
                    r.units,
                    now,
                    r.text_version,
                )
                for r in records
            ],
        )
        self.conn.executemany(
            "DELETE FROM unit_exits WHERE path = ?",  # no rows left: no exits
            [(stored_path(r.path),) for r in records if r.status != "ok"],
        )
        self.conn.executemany(
            "DELETE FROM media_facts WHERE path = ?",  # facts of a file that no longer has them
            [(stored_path(r.path),) for r in records if r.status != "ok" or r.modality not in MEDIA_MODALITIES],
        )

    def delete(self, paths: list[str]) -> None:
        stored = [(stored_path(path),) for path in paths]
        with self.transaction():  # both, or neither (no exit rows of a file no longer recorded)
            self.conn.executemany("DELETE FROM files WHERE path = ?", stored)
            self.conn.executemany("DELETE FROM unit_exits WHERE path = ?", stored)
            self.conn.executemany("DELETE FROM media_facts WHERE path = ?", stored)

    # --- media metadata -------------------------------------------------------------------
    def set_media_facts(self, facts: dict[str, dict]) -> None:
        """Per path, from its metadata (models/mediatext): capture date, GPS, OCR text, notes."""
        self.conn.executemany(
            "INSERT OR REPLACE INTO media_facts(path, taken, gps, ocr, notes) VALUES(?, ?, ?, ?, ?)",
            [
                (
                    stored_path(path),
                    int(bool(meta.get("taken_at"))),
                    int("lat" in meta),
                    int(bool(meta.get("ocr_chars"))),
                    "; ".join(meta.get("notes") or []) or None,
                )
                for path, meta in facts.items()
            ],
        )

    def media_counts(self) -> dict:
        """Files with a capture date, with GPS, with text found by OCR, with metadata ignored."""
        row = self.conn.execute(
            "SELECT count(*), coalesce(sum(taken), 0), coalesce(sum(gps), 0), coalesce(sum(ocr), 0), "
            "coalesce(sum(notes IS NOT NULL), 0) FROM media_facts"
        ).fetchone()
        return dict(zip(("files", "capture_date", "gps", "ocr_text", "metadata_notes"), row, strict=True))

    def media_notes(self, limit: int = 20) -> list[tuple[str, str]]:
        rows = self.conn.execute(
            "SELECT path, notes FROM media_facts WHERE notes IS NOT NULL ORDER BY path LIMIT ?", (limit,)
        )
        return [(real_path(path), notes) for path, notes in rows]

    # --- early exit bookkeeping --------------------------------------------------------------
    def set_exits(self, path: str, modality: str | None, groups: list[tuple[int, int, int, int, int, int]]) -> None:
        """Replace a file's exit records: groups of (exit_block, depth, units, refined,
        cache_units, cache_bytes)."""
        path = stored_path(path)
        self.conn.execute("DELETE FROM unit_exits WHERE path = ?", (path,))
        self.conn.executemany(
            "INSERT INTO unit_exits(path, modality, exit_block, depth, units, refined, cache_units, cache_bytes) "
            "VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
            [(path, modality, *group) for group in groups],
        )

    def exit_summary(self) -> list[tuple]:
        """(modality, exit_block, depth, units, refined, cache_units, cache_bytes) summed over files."""
        return list(
            self.conn.execute(
                "SELECT modality, exit_block, depth, sum(units), sum(refined), sum(cache_units), sum(cache_bytes) "
                "FROM unit_exits GROUP BY modality, exit_block, depth ORDER BY modality, exit_block"
            )
        )

    def cache_groups(self) -> list[tuple]:
        """(path, exit_block, depth, cache_bytes, indexed_at) of every group holding cache bytes."""
        return [
            (real_path(path), *rest)
            for path, *rest in self.conn.execute(
                "SELECT e.path, e.exit_block, e.depth, e.cache_bytes, f.indexed_at FROM unit_exits e "
                "JOIN files f ON f.path = e.path WHERE e.cache_bytes > 0"
            )
        ]

    def release_cache_groups(self, groups: list[tuple[str, int]]) -> None:
        self.conn.executemany(
            "UPDATE unit_exits SET cache_units = 0, cache_bytes = 0 WHERE path = ? AND exit_block = ?",
            [(stored_path(path), exit_block) for path, exit_block in groups],
        )

    def counts(self) -> dict:
        """Files by status and by modality, and units by modality (for `stats`)."""
        by_status = dict(self.conn.execute("SELECT status, count(*) FROM files GROUP BY status"))
        by_modality = {}
        for modality, files, units in self.conn.execute(
            "SELECT modality, count(*), sum(units) FROM files WHERE status = 'ok' GROUP BY modality"
        ):
            by_modality[modality] = {"files": files, "units": units or 0}
        roots = [real_path(row[0]) for row in self.conn.execute("SELECT DISTINCT root FROM files ORDER BY root")]
        return {"by_status": by_status, "by_modality": by_modality, "roots": roots}

    def has_units(self) -> bool:
        """Whether any file is recorded as embedded (so the vector table must exist)."""
        return self.conn.execute("SELECT 1 FROM files WHERE status = 'ok' AND units > 0 LIMIT 1").fetchone() is not None

    def check_vectors_present(self) -> None:
        """Refuse an index whose manifest lists embedded files while its vector table is gone."""
        db_dir = self.path.parent
        if self.has_units() and not (db_dir / TABLE_DIR).exists():
            raise RecallError(
                f"the index at {db_dir} lists embedded files but its vector table "
                f"({TABLE_DIR}) is missing; {REBUILD_HINT}"
            )

    def failures(self, limit: int = 20) -> list[tuple[str, str]]:
        rows = self.conn.execute("SELECT path, error FROM files WHERE status = 'error' ORDER BY path LIMIT ?", (limit,))
        return [(real_path(path), error) for path, error in rows]


RECORD_COLUMNS = "path, root, size, mtime_ns, hash, modality, status, error, units, text_version"


def _record(row: tuple) -> FileRecord:
    path, root, *rest = row
    return FileRecord(real_path(path), real_path(root), *rest)


def _connect_read_only(path: Path, any_thread: bool = False) -> sqlite3.Connection:
    """A manifest in a directory we cannot write: SQLite cannot create the WAL's -shm file there,
    so it is opened read-only, and as immutable when no write-ahead log is left to replay."""
    uri = "file:" + quote(str(path)) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None, check_same_thread=not any_thread)
    try:
        conn.execute("PRAGMA user_version").fetchone()
        return conn
    except sqlite3.OperationalError:
        conn.close()
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise RecallError(
            f"the index at {path.parent} is read-only and holds changes not merged into "
            f"its manifest yet ({wal.name}): make it writable for one run of `recall stats`, "
            "after which read-only queries work"
        )
    return sqlite3.connect(
        uri + "&immutable=1", uri=True, timeout=30, isolation_level=None, check_same_thread=not any_thread
    )


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception); inside another transaction it is
    part of that one."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.outer = False

    def __enter__(self):
        self.outer = not self.conn.in_transaction
        if self.outer:
            self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind, value, traceback):
        if self.outer:
            self.conn.execute("COMMIT" if kind is None else "ROLLBACK")
        return False
