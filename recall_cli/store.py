"""The vector store: one LanceDB row per embedded unit (a text chunk or a whole media file).

Row key `id` is "<path>\\x1f<chunk>", so writing a file twice overwrites instead of duplicating.
`vector` always holds the best embedding known for the unit: the coarse one from its exit block,
or the fine (full-depth) one once refined (`refined` true, `exit_block == depth`).  `cache` holds
the INT4 activation at the exit block for later refinement (empty when there is none).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

os.environ.setdefault("LANCE_LOG", "error")  # lance's Rust logger warns on every new dataset

import lancedb  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from .paths import directory_bytes  # noqa: E402

TABLE = "units"
KEY_SEP = "\x1f"

# Below this many rows a flat (exact) scan is fast enough (tens of ms); above it an IVF-HNSW index
# is built.  See benchmarks/bench_ann.py for the measured crossover.
ANN_MIN_ROWS = 50_000


def unit_id(path: str, chunk: int) -> str:
    return f"{path}{KEY_SEP}{chunk}"


def sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql_in(column: str, values: Iterable[str]) -> str:
    return f"{column} IN ({', '.join(sql_str(value) for value in values)})"


def units_schema(dim: int) -> pa.Schema:
    return pa.schema([
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
    ])


class Store:
    def __init__(self, db_dir: Path, dim: int | None = None):
        """Open the units table; create it when `dim` is given and it does not exist yet."""
        self.db = lancedb.connect(str(db_dir))
        existing = self.db.list_tables().tables
        if TABLE in existing:
            self.table = self.db.open_table(TABLE)
        elif dim is not None:
            self.table = self.db.create_table(TABLE, schema=units_schema(dim))
        else:
            self.table = None
        self.schema = self.table.schema if self.table is not None else None

    @property
    def empty(self) -> bool:
        return self.table is None or self.table.count_rows() == 0

    def count(self, where: str | None = None) -> int:
        return 0 if self.table is None else self.table.count_rows(where)

    def upsert(self, rows: list[dict]) -> None:
        if not rows:
            return
        data = pa.Table.from_pylist(rows, schema=self.schema)
        (self.table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
         .execute(data))

    def delete_paths(self, paths: list[str]) -> None:
        for start in range(0, len(paths), 500):
            self.table.delete(sql_in("path", paths[start:start + 500]))

    def delete_stale(self, current: dict[str, tuple[str, int]]) -> None:
        """Drop rows of these paths left from an older version (other hash, or chunks past the
        new count).  `current` maps path -> (hash, number of chunks)."""
        clauses = [f"(path = {sql_str(path)} AND (hash != {sql_str(content_hash)} OR chunk >= {count}))"
                   for path, (content_hash, count) in current.items()]
        for start in range(0, len(clauses), 200):
            self.table.delete(" OR ".join(clauses[start:start + 200]))

    def rows_for_path(self, path: str) -> list[dict]:
        return self.table.search().where(f"path = {sql_str(path)}").limit(None).to_arrow().to_pylist()

    def search(self, vector: np.ndarray, limit: int, where: str | None = None, extra: tuple = ()) -> list[dict]:
        """Nearest rows by dot product (`score`); `extra`: more columns to return (e.g. vector)."""
        query = self.table.search(vector.astype(np.float32)).distance_type("dot").limit(limit)
        if where:
            query = query.where(where, prefilter=True)
        columns = ["path", "chunk", "modality", "snippet", "exit_block", "depth", "refined", "mtime_ns",
                   *extra, "_distance"]
        rows = query.select(columns).to_arrow().to_pylist()
        for row in rows:
            row["score"] = 1.0 - row.pop("_distance")
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
