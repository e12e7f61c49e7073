"""Unit rows (dicts) into the Arrow table a write hands LanceDB, built column by column.

`pa.Table.from_pylist` converts row by row: every vector a Python list of floats (384 to 1,024 of
them a row), every INT4 cache blob a separate Python object copied into Arrow one at a time.  Here
the vectors become one float32 matrix, wrapped as the FixedSizeList column without another copy,
and the blobs are joined once into the data buffer of one binary column (offsets from their
lengths).  The text side (`words`, `name`) is derived per file instead of per row: the words of a
path are the same for every chunk of the file, and splitting them was a tenth of the write.

The result is the table `from_pylist` would make from the same rows with their text side (a test
compares the two)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from recall_cli.storage.schema import TEXT_COLUMNS, text_side, to_stored


def rows_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """The rows as an Arrow table of `schema` (the table's own: extra keys in a row are ignored,
    missing ones are null), their text side derived when the schema has it."""
    columns = _text_columns(rows) if all(name in schema.names for name in TEXT_COLUMNS) else {}
    for name, build in (("vector", _vector_column), ("cache", _binary_column)):
        if name in schema.names:
            columns[name] = build([row.get(name) for row in rows], schema.field(name).type)
    stored = [to_stored(row) for row in rows]  # the text side is of the real paths, as text_side's
    for field in schema:
        if field.name not in columns:
            columns[field.name] = pa.array([row.get(field.name) for row in stored], type=field.type)
    return pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)


def _vector_column(vectors: list, vector_type: pa.DataType) -> pa.Array:
    """One FixedSizeList over one contiguous float32 matrix (numpy arrays or lists per row)."""
    if not pa.types.is_fixed_size_list(vector_type) or any(vector is None for vector in vectors):
        return pa.array(vectors, type=vector_type)
    matrix = np.ascontiguousarray(np.stack([np.asarray(v, dtype=np.float32) for v in vectors]), dtype=np.float32)
    if matrix.shape[1:] != (vector_type.list_size,):
        return pa.array(vectors, type=vector_type)  # a wrong size: Arrow's own error says so
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), vector_type.list_size)


def _binary_column(blobs: list, binary_type: pa.DataType) -> pa.Array:
    """One binary array from the blobs joined once (None: null), instead of one Python object
    converted at a time."""
    present = [blob for blob in blobs if blob is not None]
    lengths = np.fromiter((len(blob) if blob is not None else 0 for blob in blobs), np.int64, len(blobs))
    total = int(lengths.sum())
    if binary_type != pa.binary() or total >= 2**31:  # 32-bit offsets: the large case stays Arrow's
        return pa.array(blobs, type=binary_type)
    offsets = np.zeros(len(blobs) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    valid = np.fromiter((blob is not None for blob in blobs), bool, len(blobs))
    validity = None if valid.all() else pa.array(valid).buffers()[1]
    data = pa.py_buffer(b"".join(present))
    return pa.Array.from_buffers(
        pa.binary(), len(blobs), [validity, pa.py_buffer(offsets), data], null_count=len(blobs) - len(present)
    )


def _text_columns(rows: list[dict]) -> dict[str, pa.Array]:
    """`words` and `name` of each row: text_side's, with the path's words derived once per file."""
    per_file: dict[tuple, dict] = {}
    words, names = [], []
    for row in rows:
        key = (row["path"], row.get("root"))
        base = per_file.get(key)
        if base is None:
            base = per_file[key] = text_side({"path": row["path"], "root": row.get("root"), "snippet": ""})
        snippet = row.get("snippet")
        words.append(f"{base['words']}\n{snippet}" if snippet else base["words"])
        names.append(base["name"])
    return {"words": pa.array(words, pa.string()), "name": pa.array(names, pa.string())}
