"""The vector store: one LanceDB row per embedded unit (a text chunk or a whole media file).

Row key `id` is "<path>\\x1f<chunk>", so writing a file twice overwrites instead of duplicating.
`vector` always holds the best embedding known for the unit: the coarse one from its exit block,
or the fine (full-depth) one once refined (`refined` true, `exit_block == depth`).  `cache` holds
the INT4 activation at the exit block for later refinement (empty when there is none).

The text side, for keyword search (LanceDB's own full-text index, BM25): `words` holds the words
of the path from the root down (names.py) and the unit's text; `name` the words of the file name
alone (`name:WORD`).  Both are derived from the row itself on every write (`upsert`), so a moved
or renamed file can never keep its old words.  An index made before they existed gains them in
place (`add_text_side`).

Media metadata (models/mediatext): `taken_at` (capture date, seconds, the camera's clock read as
UTC), `camera`, `lat`/`lon`, `place`, `artist` as columns the query filters on, and all of it as
a JSON string in `meta`.  Tables made before them gain them in place, empty (`add_meta_side`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa

from recall_cli.errors import REBUILD_HINT, RecallError, error_text, storage_error
from recall_cli.paths import stored_path
from recall_cli.storage.growth import (
    BOUND_KEEP_VERSIONS_S,
    first_fill,
    grown_past_bound,
    record_compacted,
    rewrite_past_dead_rows,
)
from recall_cli.storage.lancedb_import import import_lancedb
from recall_cli.storage.layout import TABLE_DIR, TABLE_NAME, directory_bytes
from recall_cli.storage.rowtable import rows_table
from recall_cli.storage.schema import (
    META_COLUMNS,
    META_FIELDS,
    TEXT_COLUMNS,
    TEXT_FIELDS,
    from_stored,
    fts_config,
    table_problem,
    text_side,
    units_schema,
)
from recall_cli.storage.sqlfilter import sql_in, sql_str

lancedb = import_lancedb()  # without its REST client (storage/lancedb_import.py)

log = logging.getLogger("recall")

# Below this many rows a flat (exact) scan is fast enough (tens of ms); from it on `maintain` builds
# an IVF_HNSW_SQ index (recall@10 and latency against IVF_PQ and flat: benchmarks/bench_scale.py).
# A search whose filter leaves at most FLAT_MAX_ROWS rows scans them exactly instead: a selective
# prefilter starves the probed partitions of matches and costs the index its recall.
ANN_MIN_ROWS = 50_000
FLAT_MAX_ROWS = 20_000
ANN_NPROBES = 20  # IVF partitions searched (of about sqrt(rows))
KEY_COLUMNS = ("id", "path")  # BTree-indexed from ANN_MIN_ROWS on (ensure_key_indexes)
ANN_REFINE_FACTOR = 2  # 2 x limit candidates re-ranked by their full vectors: recall@10 0.98 -> 1.0 at 100k

UPGRADE_BATCH = 2000  # rows per commit while an old table gains its text side

_SCANNED: set[tuple[str, str]] = set()  # (index, model) whose rows Store.check has scanned


class Store:
    def __init__(self, db_dir: Path, dim: int | None = None):
        """Open the units table; create it when `dim` is given and it does not exist yet."""
        self.db_dir = Path(db_dir)
        self._text_side = False  # see has_text_side
        self._vector_index: bool | None = None  # see has_vector_index
        self.exact_search = False  # True: never through the vector index (benchmarks compare)
        self.rewrites = 0  # compactions that rewrote rows to drop deleted ones (benchmarks count them)
        self._meta_side = False
        self.db = lancedb.connect(str(db_dir))
        existing = self.db.list_tables().tables
        if TABLE_NAME in existing and not _committed(self.db_dir):
            # killed while creating the table: nothing was ever committed to it (no version).  The
            # writer (who passes `dim` and holds the writer lock) starts it again; readers see none
            if dim is not None:
                import shutil

                shutil.rmtree(self.db_dir / TABLE_DIR)
            existing = [name for name in existing if name != TABLE_NAME]
        if TABLE_NAME in existing:
            try:
                self.table = self.db.open_table(TABLE_NAME)
            except Exception as error:  # a damaged table is one line, not a traceback
                raise (
                    storage_error(error, db_dir, reading=True)
                    or RecallError(
                        f"the index at {db_dir} has a vector table that cannot be opened "
                        f"({error_text(error)}); {REBUILD_HINT}"
                    )
                ) from None
        elif dim is not None:
            self.table = self.db.create_table(TABLE_NAME, schema=units_schema(dim))
            self.ensure_text_indexes()
        else:
            self.table = None
        self.schema = self.table.schema if self.table is not None else None

    def check(self, dim: int | None, model: str | None = None, scan_rows: bool = False) -> None:
        """Refuse a table this index cannot use without mixing: missing or retyped columns, vectors
        of another dimension, or (`scan_rows`: a filtered scan, done before writing) rows made by
        another model.  One RecallError line that says how to rebuild."""
        if self.table is None:
            return
        problem = table_problem(self.schema, dim)
        if problem is None and scan_rows and model and (str(self.db_dir), model) not in _SCANNED:
            other = self.table.search().where(f"model != {sql_str(model)}").select(["model"]).limit(1).to_list()
            if other:
                problem = f"it holds rows made by model {other[0]['model']!r}, not {model!r}"
            else:  # once per process: after that this process is the one writing (`recall watch`)
                _SCANNED.add((str(self.db_dir), model))
        if problem:
            raise RecallError(f"the index at {self.db_dir} cannot be used: {problem}; {REBUILD_HINT}")

    @property
    def empty(self) -> bool:
        return self.table is None or self.table.count_rows() == 0

    def count(self, where: str | None = None) -> int:
        return 0 if self.table is None else self.table.count_rows(where)

    def upsert(self, rows: list[dict], whole_files: Iterable[str] = ()) -> None:
        """Insert or overwrite rows by id.  `whole_files`: paths these rows are all of; their other
        rows (an older version: another hash, chunks past the new count) are deleted in the same
        commit, so a crash never leaves a file half old and half new."""
        if not rows:
            return
        data = rows_table(rows, self.schema)  # column-wise, with its text side (rowtable.py)
        whole_files = list(whole_files)
        # the delete clause only when some of them have rows already: it makes the merge scan the
        # whole table (about 5x slower than a plain merge at 200k rows; the check is a cheap count)
        existing = self.table.count_rows(sql_in("path", whole_files)) if whole_files else None
        if existing == 0 and {row["path"] for row in rows} <= set(whole_files):
            # no row of these files exists, so no id can match: a plain append, without the
            # merge's join on ids (0.17 s against 0.22 s of CPU for 670 rows with INT4 caches)
            self.table.add(data)
            return
        merge = self.table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
        if existing:
            merge = merge.when_not_matched_by_source_delete(sql_in("path", whole_files))
        merge.execute(data)

    def delete_paths(self, paths: list[str]) -> None:
        for start in range(0, len(paths), 500):
            self.table.delete(sql_in("path", paths[start : start + 500]))

    def rows_for_path(self, path: str) -> list[dict]:
        rows = self.table.search().where(f"path = {sql_str(path)}").limit(None).to_arrow().to_pylist()
        return [from_stored(row) for row in rows]

    def search(
        self,
        vector: np.ndarray,
        limit: int,
        where: str | None = None,
        extra: tuple = (),
        exact: bool = False,
        matching: int | None = None,
    ) -> list[dict]:
        """Nearest rows by dot product (`score`); `extra`: more columns to return (e.g. vector).
        Through the vector index when there is one, unless `exact` or the filter is selective
        (`matching`: the rows it leaves, when the caller knows; else they are counted)."""
        query = self.table.search(vector.astype(np.float32)).distance_type("dot").limit(limit)
        if where:
            query = query.where(where, prefilter=True)
        if self.has_vector_index:
            if self.scans_exactly(where, exact, matching):
                query = query.bypass_vector_index()
            else:
                query = query.nprobes(ANN_NPROBES).refine_factor(ANN_REFINE_FACTOR)
        columns = [
            "path",
            "chunk",
            "modality",
            "snippet",
            "exit_block",
            "depth",
            "refined",
            "mtime_ns",
            *self.result_meta_columns(),
            *extra,
            "_distance",
        ]
        rows = _rows(query.select(columns).to_arrow())
        for row in rows:
            row["score"] = 1.0 - row.pop("_distance")
        return rows

    def scans_exactly(self, where: str | None, exact: bool = False, matching: int | None = None) -> bool:
        """Whether `search` with this filter compares every matching row (no vector index, `exact`,
        or a selective filter) rather than going through the vector index."""
        if not self.has_vector_index or exact or self.exact_search:
            return True
        return bool(where) and _or_count(matching, self.table, where) <= FLAT_MAX_ROWS

    def keyword_search(self, query, limit: int, where: str | None = None, extra: tuple = ()) -> list[dict]:
        """Rows matching a full-text query (a lancedb FTS query object), best BM25 first, with that
        score as `keyword_score`; [] when the table has no text side yet."""
        if not self.has_text_side:
            return []
        search = self.table.search(query, query_type="fts").limit(limit)
        if where:
            search = search.where(where, prefilter=True)
        columns = ["path", "chunk", "modality", "snippet", "exit_block", "depth", "refined", "mtime_ns"]
        columns += [*self.result_meta_columns(), *extra]
        rows = _rows(search.select([*columns, "_score"]).to_arrow())
        for row in rows:
            row["keyword_score"] = row.pop("_score")
        return rows

    def result_meta_columns(self) -> tuple[str, ...]:
        """The metadata a result shows (`meta` in --json), when the table has it."""
        return ("meta",) if self.has_meta_side else ()

    @property
    def has_vector_index(self) -> bool:
        """Whether the vector column has an ANN index (read once per Store; `maintain` updates it)."""
        if self._vector_index is None:
            indexes = self.table.list_indices() if self.table is not None else []
            self._vector_index = any("vector" in index.columns for index in indexes)
        return self._vector_index

    @property
    def has_text_side(self) -> bool:
        """Whether the table has its text columns: read live until they are there (another process
        may add them), then remembered (they are never removed), so a query reads the schema once."""
        if not self._text_side:
            self._text_side = self.table is not None and all(name in self.table.schema.names for name in TEXT_COLUMNS)
        return self._text_side

    @property
    def has_meta_side(self) -> bool:
        """Whether the table has the media metadata columns (read live until they are there)."""
        if not self._meta_side:
            self._meta_side = self.table is not None and all(name in self.table.schema.names for name in META_COLUMNS)
        return self._meta_side

    def add_meta_side(self) -> None:
        """Upgrade in place: the media metadata columns, empty.  The files that have metadata are
        read again by the next index run (the manifest's text version says which)."""
        missing = [field for field in META_FIELDS if field.name not in self.schema.names]
        if missing:
            log.info("adding media metadata columns to the index")
            self.table.add_columns(pa.schema(missing))
            self.schema = self.table.schema

    def set_media_text(self, path: str, snippet: str, columns: dict) -> int:
        """A file's rows take a new text side and metadata (their vectors stay): the upgrade of a
        media file whose embedding is current.  Returns the rows changed."""
        rows = self.table.search().where(f"path = {sql_str(stored_path(path))}").select(["id", "root"]).limit(None)
        found = [from_stored(row) for row in rows.to_arrow().to_pylist()]
        if not found:
            return 0
        names = [name for name in ("snippet", *TEXT_COLUMNS, *META_COLUMNS) if name in self.schema.names]
        updates = []
        for row in found:
            text = text_side({"path": path, "root": row["root"], "snippet": snippet})
            values = {"snippet": snippet, **text, **columns}
            updates.append({"id": stored_path(row["id"]), **{name: values.get(name) for name in names}})
        schema = pa.schema([self.schema.field("id"), *(self.schema.field(name) for name in names)])
        self.table.merge_insert("id").when_matched_update_all().execute(pa.Table.from_pylist(updates, schema=schema))
        return len(updates)

    def add_text_side(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Upgrade in place: give a table made before keyword search its text columns, filled from
        each row, and their full-text indexes.  Resumable (rows still without words are filled
        next time); the caller holds the writer lock.  Returns the rows filled."""
        started = time.perf_counter()
        log.info("adding keyword search to the index (once: %d rows)", self.count())
        missing = [field for field in TEXT_FIELDS if field.name not in self.schema.names]
        if missing:
            self.table.add_columns(pa.schema(missing))
            self.schema = self.table.schema
        todo = self.table.search().where("words IS NULL").select(["id", "path", "root", "snippet"]).limit(None)
        rows = [from_stored(row) for row in todo.to_arrow().to_pylist()]
        for start in range(0, len(rows), UPGRADE_BATCH):
            batch = [{"id": stored_path(row["id"]), **text_side(row)} for row in rows[start : start + UPGRADE_BATCH]]
            self.table.merge_insert("id").when_matched_update_all().execute(pa.Table.from_pylist(batch))
            if progress:
                progress(min(start + UPGRADE_BATCH, len(rows)), len(rows))
        self.ensure_text_indexes()
        log.info("keyword search added in %.1f s", time.perf_counter() - started)
        return len(rows)

    def ensure_text_indexes(self, rebuild: bool = False) -> None:
        """The full-text indexes of the text side, created when missing (`rebuild`: built again over
        every row).  Rows written after an index was built are still searched (unindexed rows are
        scanned); `maintain` folds them in."""
        if not self.has_text_side:
            return
        indexed = set() if rebuild else {column for index in self.table.list_indices() for column in index.columns}
        for column in TEXT_COLUMNS:
            if column not in indexed:
                self.table.create_index(column, config=fts_config(), replace=True)

    def disk_bytes(self) -> int:
        return directory_bytes(Path(self.db.uri))

    def maintain(self, keep_versions_s: float = 600.0) -> None:
        """After a write-heavy run: compact small fragments, drop versions older than
        `keep_versions_s` (a reader still on one must not lose its files), and keep an ANN index
        once the table is large enough for it to pay.  Records the size it leaves: the base of
        the growth bound (storage/growth.py)."""
        import warnings
        from datetime import timedelta

        if first_fill(self.table, TEXT_COLUMNS):  # nothing to reclaim (growth.py): 0.09 s, not 0.5-1.0 s
            self.ensure_text_indexes(rebuild=True)
        else:
            self.ensure_text_indexes()
            self.rewrite_past_dead_rows()
            # optimize compacts, removes old versions, then folds new rows into every index: the
            # index files that last step replaces stay until the next removal, so keeping no version
            # (the growth bound) runs it twice; the second has nothing to compact or index: ms
            for _ in range(1 if keep_versions_s else 2):
                with warnings.catch_warnings():  # keep_versions_s 0 warns about other readers: see growth.py
                    warnings.simplefilter("ignore", UserWarning)
                    self.table.optimize(cleanup_older_than=timedelta(seconds=keep_versions_s))
        self._vector_index = None
        if self.table.count_rows() >= ANN_MIN_ROWS:
            if not self.has_vector_index:
                self.create_vector_index()
            self.ensure_key_indexes()
        record_compacted(self.db_dir)

    def rewrite_past_dead_rows(self) -> int:
        """growth.rewrite_past_dead_rows on this table; returns rows rewritten."""
        rewritten = rewrite_past_dead_rows(self.table)
        self.rewrites += bool(rewritten)
        return rewritten

    def maintain_if_grown(self) -> bool:
        """Compact (keeping no old version) when the table has grown past its bound since the last
        compaction; the caller holds the writer lock.  True when it compacted."""
        if not grown_past_bound(self.db_dir):
            return False
        self.maintain(keep_versions_s=BOUND_KEEP_VERSIONS_S)
        return True

    def ensure_key_indexes(self) -> None:
        """BTree indexes on the columns rows are looked up by (a query's write-back reads and
        merges its rows by id, then reads their files' rows by path): without them each lookup scans
        every row, which at 100k rows costs a write-back most of a second."""
        from lancedb.index import BTree

        indexed = {column for index in self.table.list_indices() for column in index.columns}
        for column in KEY_COLUMNS:
            if column not in indexed:
                self.table.create_index(column, config=BTree())

    def create_vector_index(self, index_type: str = "IVF_HNSW_SQ") -> None:
        self.table.create_index(metric="dot", vector_column_name="vector", index_type=index_type, replace=True)
        self._vector_index = True


def _rows(found: pa.Table) -> list[dict]:
    """Rows as dicts in their stored form decoded (from_stored), a vector as a numpy array (a list
    of floats per row costs about 1 ms)."""
    if not len(found):
        return []
    vectors = None
    if "vector" in found.column_names:
        column = found.column("vector").combine_chunks()
        vectors = column.values.to_numpy().reshape(len(found), -1)
        found = found.drop_columns(["vector"])
    rows = found.to_pylist()
    for index, row in enumerate(rows):
        if vectors is not None:
            row["vector"] = vectors[index]
        from_stored(row)
    return rows


def _or_count(known: int | None, table, where: str) -> int:
    return known if known is not None else table.count_rows(where)


def _committed(db_dir: Path) -> bool:
    """Whether the units table has a committed version (a table whose creation was killed has
    a directory but no version manifest)."""
    try:
        return any(name.endswith(".manifest") for name in os.listdir(db_dir / TABLE_DIR / "_versions"))
    except FileNotFoundError:
        return False
    except OSError:
        return True  # unreadable: let open_table report it
