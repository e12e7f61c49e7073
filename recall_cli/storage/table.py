"""The vector store: one LanceDB row per embedded unit (a text chunk or a whole media file).

Row key `id` is "<path>\\x1f<chunk>", so writing a file twice overwrites instead of duplicating.
`vector` always holds the best embedding known for the unit: the coarse one from its exit block,
or the fine (full-depth) one once refined (`refined` true, `exit_block == depth`).  `cache` holds
the INT4 activation at the exit block for later refinement (empty when there is none).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

os.environ.setdefault("LANCE_LOG", "error")  # lance's Rust logger warns on every new dataset

import lancedb
import numpy as np
import pyarrow as pa

from recall_cli.errors import REBUILD_HINT, RecallError, error_text, storage_error
from recall_cli.paths import real_path, stored_path
from recall_cli.storage.layout import TABLE_DIR, TABLE_NAME, directory_bytes
from recall_cli.storage.sqlfilter import sql_in, sql_str

KEY_SEP = "\x1f"

# Below this many rows a flat (exact) scan is fast enough (tens of ms); above it an IVF-HNSW index
# is built.  See benchmarks/bench_ann.py for the measured crossover.
ANN_MIN_ROWS = 50_000


def unit_id(path: str, chunk: int) -> str:
    return f"{path}{KEY_SEP}{chunk}"


def units_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("path", pa.string(), nullable=False),
            pa.field("root", pa.string()),
            pa.field("hash", pa.string()),
            pa.field("chunk", pa.int32()),
            pa.field("modality", pa.string()),
            pa.field("snippet", pa.string()),
            pa.field("size", pa.int64()),
            pa.field("mtime_ns", pa.int64()),
            pa.field("model", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
            pa.field("exit_block", pa.int16()),
            pa.field("depth", pa.int16()),
            pa.field("refined", pa.bool_()),
            pa.field("cache", pa.binary()),
            pa.field("adapter_version", pa.int32()),
            pa.field("indexed_at", pa.float64()),
        ]
    )


_SCANNED: set[tuple[str, str]] = set()  # (index, model) whose rows Store.check has scanned


def table_problem(schema: pa.Schema, dim: int | None) -> str | None:
    """What makes a units table unusable for an index whose model makes `dim`-dimensional
    vectors (None: any), or None.  Extra columns are harmless and allowed."""
    expected = units_schema(dim or 1)
    missing = [field.name for field in expected if field.name not in schema.names]
    if missing:
        return f"its vector table lacks the column{'s' * (len(missing) > 1)} {', '.join(missing)}"
    vector = schema.field("vector").type
    if not pa.types.is_fixed_size_list(vector) or vector.value_type != pa.float32():
        return f"its vector column holds {vector}, not float32 vectors"
    if dim is not None and vector.list_size != dim:
        return f"its vectors have {vector.list_size} dimensions but the index's model makes {dim}"
    for field in expected:
        if field.name != "vector" and schema.field(field.name).type != field.type:
            return f"its column {field.name} holds {schema.field(field.name).type}, not {field.type}"
    return None


class Store:
    def __init__(self, db_dir: Path, dim: int | None = None):
        """Open the units table; create it when `dim` is given and it does not exist yet."""
        self.db_dir = Path(db_dir)
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
        data = pa.Table.from_pylist([_to_stored(row) for row in rows], schema=self.schema)
        merge = self.table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
        whole_files = list(whole_files)
        # only when some of them have rows already: the delete clause makes the merge scan the
        # whole table (about 5x slower than a plain merge at 200k rows; the check is a cheap count)
        if whole_files and self.table.count_rows(sql_in("path", whole_files)):
            merge = merge.when_not_matched_by_source_delete(sql_in("path", whole_files))
        merge.execute(data)

    def delete_paths(self, paths: list[str]) -> None:
        for start in range(0, len(paths), 500):
            self.table.delete(sql_in("path", paths[start : start + 500]))

    def rows_for_path(self, path: str) -> list[dict]:
        rows = self.table.search().where(f"path = {sql_str(path)}").limit(None).to_arrow().to_pylist()
        return [_from_stored(row) for row in rows]

    def search(self, vector: np.ndarray, limit: int, where: str | None = None, extra: tuple = ()) -> list[dict]:
        """Nearest rows by dot product (`score`); `extra`: more columns to return (e.g. vector)."""
        query = self.table.search(vector.astype(np.float32)).distance_type("dot").limit(limit)
        if where:
            query = query.where(where, prefilter=True)
        columns = [
            "path",
            "chunk",
            "modality",
            "snippet",
            "exit_block",
            "depth",
            "refined",
            "mtime_ns",
            *extra,
            "_distance",
        ]
        rows = query.select(columns).to_arrow().to_pylist()
        for row in rows:
            row["score"] = 1.0 - row.pop("_distance")
            _from_stored(row)
        return rows

    def disk_bytes(self) -> int:
        return directory_bytes(Path(self.db.uri))

    def maintain(self) -> None:
        """After a write-heavy run: compact small fragments, drop old versions, and keep an ANN
        index once the table is large enough for it to pay."""
        from datetime import timedelta

        self.table.optimize(cleanup_older_than=timedelta(minutes=10))
        rows = self.table.count_rows()
        has_vector_index = any("vector" in index.columns for index in self.table.list_indices())
        if rows >= ANN_MIN_ROWS and not has_vector_index:
            self.table.create_index(metric="dot", vector_column_name="vector", index_type="IVF_HNSW_SQ")


def _committed(db_dir: Path) -> bool:
    """Whether the units table has a committed version (a table whose creation was killed has
    a directory but no version manifest)."""
    try:
        return any(name.endswith(".manifest") for name in os.listdir(db_dir / TABLE_DIR / "_versions"))
    except FileNotFoundError:
        return False
    except OSError:
        return True  # unreadable: let open_table report it


_PATH_COLUMNS = ("id", "path", "root")


def _to_stored(row: dict) -> dict:
    """A row as written: file names that are not UTF-8 in their stored form (see paths.py)."""
    if all(not isinstance(row.get(key), str) or row[key].isascii() for key in _PATH_COLUMNS):
        return row
    return {**row, **{key: stored_path(row[key]) for key in _PATH_COLUMNS if isinstance(row.get(key), str)}}


def _from_stored(row: dict) -> dict:
    for key in _PATH_COLUMNS:
        if isinstance(row.get(key), str):
            row[key] = real_path(row[key])
    return row
