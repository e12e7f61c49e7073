"""The units table's columns: what each row holds, how its text side is derived, and when an
existing table is unusable.  Kept apart from the Store (storage/table.py) so that code that only
names rows (an index run's row ids, a benchmark's synthetic rows) needs no lancedb."""

from __future__ import annotations

import pyarrow as pa

from recall_cli.names import name_words, path_words
from recall_cli.paths import real_path, stored_path

KEY_SEP = "\x1f"

# Added to tables made before keyword search: upgradable in place, so not required by table_problem.
TEXT_FIELDS = (pa.field("words", pa.string()), pa.field("name", pa.string()))
TEXT_COLUMNS = tuple(field.name for field in TEXT_FIELDS)
META_FIELDS = (
    pa.field("taken_at", pa.float64()),
    pa.field("camera", pa.string()),
    pa.field("lat", pa.float64()),
    pa.field("lon", pa.float64()),
    pa.field("place", pa.string()),
    pa.field("artist", pa.string()),
    pa.field("meta", pa.string()),
)
META_COLUMNS = tuple(field.name for field in META_FIELDS)
UPGRADABLE = TEXT_COLUMNS + META_COLUMNS

# The INT4 cache blobs are written as they are: LanceDB's default compression of a binary column
# (2.1 files) shrank them by 4% (quantised codes hardly compress) and doubled the CPU of writing
# them (0.10 s against 0.045 s for 670 MiniLM rows, 35.6 MB) and of reading them back (0.12 s
# against 0.06 s).  Tables made before keep their setting: the type is the same.
CACHE_ENCODING = {"lance-encoding:compression": "none"}


def fts_config():
    """How the text side is tokenised.  No stemming and no stop-word removal: one-word queries for
    identifiers and rare words found their document at rank 1 0.954 of the time that way, 0.787 with
    the English defaults (PLATFORM-NOTES, 300 docstrings); positions are kept for "exact phrases"."""
    from lancedb.index import FTS

    return FTS(with_position=True, base_tokenizer="simple", stem=False, remove_stop_words=False, ascii_folding=True)


def text_side(row: dict) -> dict:
    """The `words` and `name` of a row (real path, root and snippet), as stored."""
    path, snippet = row["path"], row.get("snippet") or ""
    words = path_words(path, row.get("root"))
    return {"words": f"{words}\n{snippet}" if snippet else words, "name": name_words(path)}


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
            *TEXT_FIELDS,
            pa.field("size", pa.int64()),
            pa.field("mtime_ns", pa.int64()),
            pa.field("model", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
            pa.field("exit_block", pa.int16()),
            pa.field("depth", pa.int16()),
            pa.field("refined", pa.bool_()),
            pa.field("cache", pa.binary(), metadata=CACHE_ENCODING),
            pa.field("adapter_version", pa.int32()),
            pa.field("indexed_at", pa.float64()),
            *META_FIELDS,
        ]
    )


def table_problem(schema: pa.Schema, dim: int | None) -> str | None:
    """What makes a units table unusable for an index whose model makes `dim`-dimensional
    vectors (None: any), or None.  Extra columns are harmless and allowed."""
    expected = units_schema(dim or 1)
    missing = [field.name for field in expected if field.name not in schema.names and field.name not in UPGRADABLE]
    if missing:
        return f"its vector table lacks the column{'s' * (len(missing) > 1)} {', '.join(missing)}"
    vector = schema.field("vector").type
    if not pa.types.is_fixed_size_list(vector) or vector.value_type != pa.float32():
        return f"its vector column holds {vector}, not float32 vectors"
    if dim is not None and vector.list_size != dim:
        return f"its vectors have {vector.list_size} dimensions but the index's model makes {dim}"
    for field in expected:
        if field.name in schema.names and field.name != "vector" and schema.field(field.name).type != field.type:
            return f"its column {field.name} holds {schema.field(field.name).type}, not {field.type}"
    return None


_PATH_COLUMNS = ("id", "path", "root")


def to_stored(row: dict) -> dict:
    """A row as written: file names that are not UTF-8 in their stored form (see paths.py)."""
    if all(not isinstance(row.get(key), str) or row[key].isascii() for key in _PATH_COLUMNS):
        return row
    return {**row, **{key: stored_path(row[key]) for key in _PATH_COLUMNS if isinstance(row.get(key), str)}}


def from_stored(row: dict) -> dict:
    for key in _PATH_COLUMNS:
        if isinstance(row.get(key), str):
            row[key] = real_path(row[key])
    return row
