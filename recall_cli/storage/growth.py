"""How much the units table has grown on disk since its last compaction, and the bound past which
the process that wrote to it compacts it.

Every commit to LanceDB (above all a query's write-back of the rows it refined) adds a data file,
a deletion file and a version manifest; only a compaction folds them in and removes the old
versions.  Instead of compacting on a schedule, the process that has just written (a query in
process, the on-demand server, `recall watch`) checks the table's bytes on disk against its size
right after the last compaction, recorded in the index directory by `Store.maintain` (so the bound
holds across processes and restarts), and compacts once the growth passes the bound: GROWTH_BOUND
of that size, or GROWTH_FLOOR_BYTES on a small index (where a few write-backs would pass 3%, and
compacting after every other query would cost more than the bytes are worth).  The table directory
therefore never exceeds the bound by more than one write's worth, as long as the writer can take
the writer lock (`recall index` holding it compacts when it ends).

What LanceDB's optimize alone cannot give back: a write-back replaces whole rows, and the old
copies (with their INT4 cache) stay inside their data fragment until LanceDB rewrites it, which it
does once a tenth of the fragment's rows are deleted (lancedb's optimize takes no threshold).  So
a compaction also counts each fragment's deleted rows (from the row addresses) and, past
DEAD_ROWS_SHARE, rewrites enough refined rows to carry the fragment over LanceDB's threshold
(rows_to_rewrite, below); the rewrite gives back the cache of every refined row.

A check is one walk of the table directory: its file count is bounded by the same compactions
(about four files per write-back), a millisecond or two at 100,000 rows, done after the answer,
never on a query's path.  An index run's own growth is new data, not garbage: it compacts when it
ends and records the new size.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from recall_cli.storage.layout import COMPACTED_FILE, TABLE_DIR, directory_bytes
from recall_cli.storage.sqlfilter import sql_in

log = logging.getLogger("recall")

GROWTH_BOUND = 0.03  # of the size after the last compaction
GROWTH_FLOOR_BYTES = 2 * 2**20  # never compact for less growth than this (small indexes)
# Versions a compaction on the bound keeps: none.  Versions are kept by age, so any window would,
# in a busy query loop, keep the last compaction's superseded index files (a third of the table
# at 100k rows) until the next compaction: the bound would not hold.  The readers that could need
# them are queries, and the process that compacts is the one answering them (on its serving
# thread, or under the query server's lock inside `recall watch`); other processes' queries go to
# that server.
BOUND_KEEP_VERSIONS_S = 0.0


def table_bytes(db_dir: Path) -> int:
    return directory_bytes(Path(db_dir) / TABLE_DIR)


def record_compacted(db_dir: Path, size: int | None = None) -> None:
    """Remember the table's size now, just after a compaction (the base of the bound)."""
    path = Path(db_dir) / COMPACTED_FILE
    record = {"bytes": table_bytes(db_dir) if size is None else size, "at": time.time()}
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        temporary.write_text(json.dumps(record))
        os.replace(temporary, path)
    except OSError:  # a read-only index: the bound is checked against its current size next time
        pass


def compacted_bytes(db_dir: Path) -> int | None:
    try:
        return int(json.loads((Path(db_dir) / COMPACTED_FILE).read_text())["bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def growth_limit(base: int) -> int:
    """The most bytes the table may hold before it is compacted again."""
    return base + max(int(base * GROWTH_BOUND), GROWTH_FLOOR_BYTES)


def grown_past_bound(db_dir: Path) -> bool:
    """Whether the table has grown past its bound since the last compaction.  An index with no
    record yet (made before it existed) starts counting from its size now."""
    size = table_bytes(db_dir)
    base = compacted_bytes(db_dir)
    if base is None:
        record_compacted(db_dir, size)
        return False
    return size > growth_limit(base)


# Deleted rows stay inside their data fragment until a compaction rewrites it, and LanceDB's optimize
# (which takes no threshold) rewrites a fragment only once more than LANCEDB_REWRITE_SHARE of its
# rows are deleted: on a table of one large fragment, as `recall index` leaves it, a tenth of the
# table (with its INT4 cache) can stay on disk as dead copies of rows that write-backs replaced.
# Past DEAD_ROWS_SHARE, a compaction rewrites enough of the fragment's refined rows (small: their
# cache is gone) unchanged to carry it past LanceDB's threshold, and its optimize then drops every
# dead copy.  The price: that optimize rewrites the fragment and remaps the indexes (seconds to a
# minute at 100,000 rows), once per DEAD_ROWS_SHARE of the table refined.
DEAD_ROWS_SHARE = 0.03
LANCEDB_REWRITE_SHARE = 0.10
REWRITE_MARGIN = 0.01  # of the fragment: its row count is read from row addresses, a lower bound


def rows_to_rewrite(table) -> list[str]:
    """Ids of refined rows to rewrite unchanged so that every fragment holding more than
    DEAD_ROWS_SHARE deleted rows passes LanceDB's rewrite threshold ([] when none does, or when a
    fragment has too few refined rows to get there)."""
    import numpy as np

    found = table.search().select(["id", "refined", "_rowaddr"]).limit(None).to_arrow()
    if not len(found):
        return []
    addresses = found.column("_rowaddr").to_numpy()
    fragments, offsets = addresses >> 32, addresses & 0xFFFFFFFF
    refined = found.column("refined").to_numpy(zero_copy_only=False).astype(bool)
    ids = found.column("id")
    chosen: list[str] = []
    for fragment in np.unique(fragments):
        mine = fragments == fragment
        on_disk = int(offsets[mine].max()) + 1
        dead = on_disk - int(mine.sum())
        if dead <= DEAD_ROWS_SHARE * on_disk:
            continue
        needed = int((LANCEDB_REWRITE_SHARE + REWRITE_MARGIN) * on_disk) + 1 - dead
        candidates = np.flatnonzero(mine & refined)
        if 0 < needed <= len(candidates):  # needed <= 0: past LanceDB's threshold already
            chosen += ids.take(candidates[:needed]).to_pylist()
    return chosen


def rewrite_past_dead_rows(table) -> int:
    """Rewrite the rows_to_rewrite unchanged, so that the optimize that follows drops the deleted
    rows of their fragments; only onto rows still as read (same hash, still refined), since a
    write-back may have replaced one meanwhile.  Returns rows rewritten."""
    import pyarrow as pa

    ids = rows_to_rewrite(table)
    if not ids:
        return 0
    parts = [
        table.search().where(sql_in("id", ids[start : start + 500])).limit(None).to_arrow()
        for start in range(0, len(ids), 500)
    ]
    data = pa.concat_tables(parts).cast(table.schema)
    table.merge_insert("id").when_matched_update_all(where="target.hash = source.hash AND target.refined").execute(data)
    log.debug("rewrote %d rows so that the compaction drops the deleted ones", len(ids))
    return len(ids)


# A table's first fill: `recall index` of a new index appends each batch as a fragment of its own
# into a table whose text indexes were built while it was empty.  Compacting it would only merge
# those large fragments, rewriting every byte of the INT4 cache; no row was deleted and no old
# version holds data of its own, so there is nothing to reclaim: its maintenance builds the text
# indexes over every row instead.  Past FIRST_FILL_FRAGMENTS (LanceDB's advice: optimize after
# about 20 writes) the fragments are worth merging, and any later maintenance compacts as usual
# (the first one after a first fill drops the deleted rows but may leave the first fill's fragments
# apart from newer ones; the next merges them).
FIRST_FILL_FRAGMENTS = 20


def first_fill(table, text_columns: tuple[str, ...]) -> bool:
    """Whether `table` holds only its first fill: the indexes on `text_columns` cover no row yet,
    no row was ever deleted, and it has at most FIRST_FILL_FRAGMENTS fragments."""
    text_indexes = [index for index in table.list_indices() if index.columns[0] in text_columns]
    if not text_indexes or any(index.num_indexed_rows for index in text_indexes):
        return False
    latest = table.list_versions()[-1]["metadata"]
    deleted = int(latest.get("total_deletion_file_rows", 1))
    return deleted == 0 and int(latest.get("total_fragments", FIRST_FILL_FRAGMENTS + 1)) <= FIRST_FILL_FRAGMENTS
