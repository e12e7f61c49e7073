"""Rows are written column by column (storage/rowtable.py): the same table as writing them row by
row, read back the same from a real LanceDB table, INT4 caches stored without compression."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from recall_cli.storage.rowtable import rows_table
from recall_cli.storage.schema import text_side, to_stored, units_schema
from recall_cli.storage.table import Store

DIM = 8


def _rows() -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for index, (path, chunk, cache) in enumerate(
        [
            ("/home/u/notes/myHolidayPlan.md", 0, rng.bytes(300)),
            ("/home/u/notes/myHolidayPlan.md", 1, None),  # a full-depth unit: no cache
            ("/home/u/notes/caf\udce9.txt", 0, rng.bytes(17)),  # a file name that is not UTF-8
            ("/home/u/photos/IMG_2019.jpg", 0, b""),
        ]
    ):
        vector = rng.normal(size=DIM).astype(np.float32)
        rows.append(
            {
                "id": f"{path}\x1f{chunk}",
                "path": path,
                "root": "/home/u",
                "hash": f"h{index}",
                "chunk": chunk,
                "modality": "image" if path.endswith(".jpg") else "text",
                "snippet": "" if path.endswith(".jpg") else f"chunk {chunk} of the plan",
                "size": 10 + index,
                "mtime_ns": 1_000 + index,
                "model": "minilm",
                "vector": vector if index % 2 else vector.tolist(),  # arrays from the encoder, lists from a read
                "exit_block": 3,
                "depth": 6,
                "refined": cache is None,
                "cache": cache,
                "adapter_version": 0,
                "indexed_at": 1.5,
                "_distance": 0.25,  # a key the table does not have: ignored
            }
        )
    rows[-1]["camera"] = "Kodak"  # one row with a metadata column, the others without
    return rows


def test_column_wise_table_equals_the_row_wise_one():
    schema = units_schema(DIM)
    rows = _rows()
    row_wise = pa.Table.from_pylist([to_stored({**row, **text_side(row)}) for row in rows], schema=schema)
    column_wise = rows_table(rows, schema)
    assert column_wise.equals(row_wise)
    assert column_wise.column("cache").null_count == 1


def test_rows_read_back_as_written_and_caches_are_not_compressed(tmp_path):
    store = Store(tmp_path / "db", dim=DIM)
    rows = _rows()
    store.upsert(rows, whole_files={row["path"] for row in rows})
    assert store.table.schema.field("cache").metadata == {b"lance-encoding:compression": b"none"}
    for row in rows:
        [stored] = [found for found in store.rows_for_path(row["path"]) if found["chunk"] == row["chunk"]]
        assert stored["cache"] == row["cache"]
        assert np.array_equal(np.asarray(stored["vector"], np.float32), np.asarray(row["vector"], np.float32))
        assert stored["camera"] == row.get("camera")
    by_words = store.table.search().where("name = 'myholidayplan my holiday plan md'").limit(None).to_list()
    assert len(by_words) == 2
