"""The manifest's schema as an ordered list of small migrations (`PRAGMA user_version` records
how many ran), and what runs after some of them to fill what they add from the vector table."""

from __future__ import annotations

from recall_cli.paths import real_path
from recall_cli.storage.layout import TABLE_DIR

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
    # 2: early exit: per file and exit block, how many units stopped there, how many are
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
    # 3: the text side of media files (models/mediatext).  `text_version` says which version of
    # the media text extraction a file was last read with: a photo, song or video read before
    # MEDIA_TEXT_VERSION is read again by the next index run even when it has not changed.
    # `media_facts` is what `stats` counts: capture date, GPS, text found by OCR, notes on
    # metadata that was ignored.
    """
    ALTER TABLE files ADD COLUMN text_version INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE media_facts (
        path TEXT PRIMARY KEY,
        taken INTEGER NOT NULL,
        gps INTEGER NOT NULL,
        ocr INTEGER NOT NULL,
        notes TEXT
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
MEDIA_TEXT_VERSION = 1  # raise it when media text extraction changes: unchanged media is read again
MEDIA_MODALITIES = ("image", "audio", "video")


def exit_groups(rows: list[dict]) -> tuple[str | None, list[tuple[int, int, int, int, int, int]]]:
    """A file's rows (dicts with exit_block, depth, refined, cache, modality) -> the manifest's
    (modality, [(exit_block, depth, units, refined, cache_units, cache_bytes)])."""
    groups: dict[int, list[int]] = {}
    modality = None
    for row in rows:
        modality = row.get("modality", modality)
        group = groups.setdefault(int(row["exit_block"]), [int(row["depth"]), 0, 0, 0, 0])
        group[1] += 1
        group[2] += int(bool(row["refined"]))
        if row.get("cache"):
            group[3] += 1
            group[4] += len(row["cache"])
    return modality, [(exit_block, *values) for exit_block, values in sorted(groups.items())]


def _backfill_exits(manifest) -> None:
    """Schema 2 added `unit_exits`.  An index made before it has its rows in LanceDB but no exit
    records, so `stats`, the cache budget and the query's exit groups would miss those rows: they
    are read back from the vector table once, inside the migration's transaction."""
    db_dir = manifest.path.parent
    if not (db_dir / TABLE_DIR).exists() or not manifest.has_units():
        return
    from recall_cli.storage.table import Store

    store = Store(db_dir)
    if store.table is None:
        return
    ok = {real_path(row[0]) for row in manifest.conn.execute("SELECT path FROM files WHERE status = 'ok'")}
    columns = ["path", "modality", "exit_block", "depth", "refined", "cache"]
    by_path: dict[str, list[dict]] = {}
    for row in store.table.search().select(columns).limit(None).to_arrow().to_pylist():
        path = real_path(row["path"])
        if path in ok:
            by_path.setdefault(path, []).append(row)
    for path, rows in by_path.items():
        manifest.set_exits(path, *exit_groups(rows))


# What runs after a migration's statements (by the schema version it makes), in its transaction.
AFTER_MIGRATION = {2: _backfill_exits}
