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

What a compaction cannot give back at once: a write-back replaces whole rows, and the old copies
(with their INT4 cache) stay inside their data file until LanceDB rewrites it, which its optimize
does once a tenth of the file's rows are deleted (lancedb's optimize takes no threshold).  Until
then each compaction records a base that includes the refined copies (about 2.4 KB a row); the
rewrite then gives back the cache of every refined row, and the table ends smaller than it began.

A check is one walk of the table directory: its file count is bounded by the same compactions
(about four files per write-back), a millisecond or two at 100,000 rows, done after the answer,
never on a query's path.  An index run's own growth is new data, not garbage: it compacts when it
ends and records the new size.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from recall_cli.storage.layout import COMPACTED_FILE, TABLE_DIR, directory_bytes

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
