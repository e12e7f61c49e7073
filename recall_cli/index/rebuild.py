"""`recall index --rebuild`: make the index again from the files, whatever state the old one is in
(damaged, made by another recall or another model), replacing it only once the new one is complete.

The new index is built in a hidden directory beside the old one (`.<name>.rebuild-<pid>`), while
the old one's writer lock is held (so a `recall watch` or another `recall index` on it refuses to
start meanwhile); then the two are swapped with renames and the old one is deleted.  Until the swap,
queries keep using the old index; if the rebuild fails (disk full, Ctrl-C), the half-built
directory is removed and the old index is untouched.  It needs room for both while it runs.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

from recall_cli.errors import StorageError, storage_error
from recall_cli.index.indexer import index_locked, index_roots
from recall_cli.index.options import IndexOptions, IndexSummary, check_roots
from recall_cli.storage.layout import MANIFEST_NAME, check_writable, ensure_private_dir, rebuild_dirs
from recall_cli.storage.lock import WriterLock

KEPT_SETTINGS = ("model", "full_depth", "cache_budget")  # what the user chose for this index


def previous_settings(db_dir: Path) -> dict[str, str]:
    """The model, --full and --cache-budget recorded in an old index's manifest, when it can still
    be read (a rebuild keeps what it is not told otherwise); {} for a damaged or missing one."""
    path = Path(db_dir) / MANIFEST_NAME
    if not path.is_file():
        return {}
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=5)
        try:
            rows = conn.execute(f"SELECT key, value FROM meta WHERE key IN {KEPT_SETTINGS}").fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return {}
    return dict(rows)


def keep_settings(options: IndexOptions, settings: dict[str, str]) -> IndexOptions:
    """`options` with the old index's settings wherever the command line gave none."""
    return replace(
        options,
        model=options.model or settings.get("model"),
        full=options.full or settings.get("full_depth") == "1",
        cache_budget=options.cache_budget or settings.get("cache_budget"),
    )


def rebuild_roots(
    roots: list[str],
    db_dir: Path,
    options: IndexOptions = IndexOptions(),
    progress: Callable[[int, int], None] | None = None,
) -> IndexSummary:
    started = time.perf_counter()
    roots = check_roots(roots)
    db_dir = Path(db_dir)
    if not db_dir.exists():
        return index_roots(roots, db_dir, options, progress)
    options = keep_settings(options, previous_settings(db_dir))
    check_writable(db_dir.parent)  # the new index is made beside the old one
    check_writable(db_dir)
    fresh, retired = rebuild_dirs(db_dir)
    with WriterLock(db_dir, "rebuild"):
        try:
            ensure_private_dir(fresh)
            with WriterLock(fresh, "rebuild"):
                summary = index_locked(fresh, roots, options, progress)
            os.rename(db_dir, retired)
            try:
                os.rename(fresh, db_dir)
            except BaseException:
                os.rename(retired, db_dir)
                raise
        except BaseException as error:
            shutil.rmtree(fresh, ignore_errors=True)
            if isinstance(error, StorageError) and error.__cause__ is not None:
                error = error.__cause__  # said of the hidden directory: say it of the index
            mapped = storage_error(error, db_dir) if isinstance(error, Exception) else None
            if mapped is None or mapped is error:
                raise
            raise mapped from error
    shutil.rmtree(retired, ignore_errors=True)
    summary.seconds = time.perf_counter() - started
    return summary
