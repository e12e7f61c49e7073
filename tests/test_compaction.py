"""Compaction (Store.maintain: compact fragments, drop old versions, keep the indexes current) never
loses a row that another process writes while it runs, nor a row it updates."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
from conftest import REPO

from recall_cli.storage.layout import prepare_index_dir
from recall_cli.storage.table import Store

DIM = 8
WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from recall_cli.storage.table import Store
    sys.path.insert(0, {tests!r})
    from test_compaction import rows
    store = Store({db!r})
    for batch in range({batches}):
        fresh = rows([f"new{{batch}}-{{i}}" for i in range(10)], batch)
        updated = rows([f"old{{batch * 5 + i}}" for i in range(5)], 100 + batch, refined=True)  # a write-back
        store.upsert(fresh + updated)
        print(batch, flush=True)
    """
)


def rows(names: list[str], seed: int, refined: bool = False) -> list[dict]:
    vectors = np.random.default_rng(seed).normal(size=(len(names), DIM)).astype(np.float32)
    return [
        {
            "id": f"/f/{name}.md\x1f0",
            "path": f"/f/{name}.md",
            "root": "/f",
            "hash": name,
            "chunk": 0,
            "modality": "text",
            "snippet": f"words of {name}",
            "size": 1,
            "mtime_ns": 1,
            "model": "minilm",
            "vector": vector.tolist(),
            "exit_block": 6,
            "depth": 6,
            "refined": refined,
            "cache": None,
            "adapter_version": 0,
            "indexed_at": 0.0,
        }
        for name, vector in zip(names, vectors, strict=True)
    ]


def test_rows_written_while_compacting_are_all_kept(tmp_path):
    db = tmp_path / "db"
    prepare_index_dir(db)
    store = Store(db, dim=DIM)
    for start in range(0, 200, 20):  # many small fragments: something to compact
        store.upsert(rows([f"old{i}" for i in range(start, start + 20)], start))
    batches = 30
    code = WRITER.format(tests=str(REPO / "tests"), db=str(db), batches=batches)
    writer = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    compactions = 0
    while writer.poll() is None or compactions < 2:
        store.maintain()
        compactions += 1
    output, _ = writer.communicate(timeout=120)
    assert writer.returncode == 0 and output.split()[-1] == str(batches - 1)
    store.maintain()  # once more after the writer: folds in its last fragments too
    table = Store(db).table.to_arrow()
    ids = set(table.column("id").to_pylist())
    written = {f"/f/new{batch}-{i}.md\x1f0" for batch in range(batches) for i in range(10)}
    assert written <= ids and len(ids) == 200 + len(written)  # no row lost, none duplicated
    refined = dict(zip(table.column("path").to_pylist(), table.column("refined").to_pylist(), strict=True))
    assert all(refined[f"/f/old{i}.md"] for i in range(batches * 5))  # every update kept
    assert not any(refined[f"/f/old{i}.md"] for i in range(batches * 5, 200))
    assert compactions >= 2


def test_a_large_table_gets_key_indexes_and_lookups_stay_right(tmp_path, monkeypatch):
    """From ANN_MIN_ROWS on, maintain adds BTree indexes on id and path (a write-back's lookups);
    rows written after them are still found by id and by path, with their latest values."""
    from recall_cli.storage import table as table_module
    from recall_cli.storage.sqlfilter import sql_in, sql_str

    monkeypatch.setattr(table_module, "ANN_MIN_ROWS", 300)
    db = tmp_path / "db"
    prepare_index_dir(db)
    store = Store(db, dim=DIM)
    store.upsert(rows([f"old{i}" for i in range(299)], 1))
    store.maintain()
    assert not {column for index in store.table.list_indices() for column in index.columns} & {"id", "path"}
    store.upsert(rows(["old299"], 2))
    store.maintain()
    indexed = {column for index in store.table.list_indices() for column in index.columns}
    assert {"id", "path"} <= indexed and "vector" in indexed
    store.upsert(rows([f"old{i}" for i in range(10)], 3, refined=True) + rows(["new0"], 4))  # after the indexes
    found = store.table.search().where(sql_in("id", [f"/f/old{i}.md\x1f0" for i in (0, 9, 10)])).limit(None)
    refined = {row["path"]: row["refined"] for row in found.to_list()}
    assert refined == {"/f/old0.md": True, "/f/old9.md": True, "/f/old10.md": False}
    by_path = store.table.search().where(f"path = {sql_str('/f/new0.md')}").limit(None).to_list()
    assert [row["id"] for row in by_path] == ["/f/new0.md\x1f0"]
    assert store.count() == 301


def refined_rows(names: list[str], seed: int) -> list[dict]:
    """A query's write-back: the rows' fine vectors, their cache released."""
    return rows(names, seed, refined=True)


def cached_rows(names: list[str], seed: int) -> list[dict]:
    """Rows waiting for refinement, each with an incompressible cache blob (as real INT4 ones are)."""
    out = rows(names, seed)
    for number, row in enumerate(out):
        row["cache"] = np.random.default_rng(seed * 1000 + number).bytes(2000)
    return out


def test_a_loop_of_write_backs_keeps_the_table_within_its_growth_bound(tmp_path, monkeypatch):
    """Write-backs one after another, each followed by the bound check a query makes: the table
    directory never grows past its size after the last compaction plus the bound plus one write,
    ends no larger than it started plus the bound (no old version is left behind), and keeps
    every row with its latest values."""
    from recall_cli.storage import growth
    from recall_cli.storage.lock import WriterLock

    monkeypatch.setattr(growth, "GROWTH_FLOOR_BYTES", 0)  # the table is small: the share decides
    monkeypatch.setattr(growth, "GROWTH_BOUND", 0.05)
    db = tmp_path / "db"
    prepare_index_dir(db)
    store = Store(db, dim=DIM)
    store.upsert(cached_rows([f"old{i}" for i in range(400)], 1))
    store.maintain()
    start = growth.table_bytes(db)
    assert growth.compacted_bytes(db) == start
    compactions, largest_write = 0, 0
    for batch in range(60):
        before = growth.table_bytes(db)
        limit = growth.growth_limit(growth.compacted_bytes(db))
        with WriterLock(db, "query"):
            store.upsert(refined_rows([f"old{batch * 5 + i}" for i in range(5)], 100 + batch))
            largest_write = max(largest_write, growth.table_bytes(db) - before)
            compactions += store.maintain_if_grown()
        assert growth.table_bytes(db) <= limit + largest_write, f"past the bound after write-back {batch}"
    assert compactions >= 3
    assert growth.table_bytes(db) <= start * 1.05
    table = Store(db).table.to_arrow()
    assert sorted(table.column("id").to_pylist()) == sorted(f"/f/old{i}.md\x1f0" for i in range(400))
    refined = dict(zip(table.column("path").to_pylist(), table.column("refined").to_pylist(), strict=True))
    assert all(refined[f"/f/old{i}.md"] for i in range(300))  # every write-back kept
    assert not any(refined[f"/f/old{i}.md"] for i in range(300, 400))


def test_an_index_without_a_size_record_starts_counting_from_now(tmp_path):
    from recall_cli.storage import growth

    db = tmp_path / "db"
    prepare_index_dir(db)
    store = Store(db, dim=DIM)
    store.upsert(rows([f"old{i}" for i in range(20)], 1))
    assert growth.compacted_bytes(db) is None  # written, never compacted (an index made before)
    assert not store.maintain_if_grown()
    assert growth.compacted_bytes(db) == growth.table_bytes(db)


def test_writing_whole_files_appends_new_ones_and_replaces_known_ones(tmp_path):
    # new files are appended without a merge; a file already in the table (an earlier run, or a
    # run killed after its table write but before its manifest write) is replaced, never doubled
    prepare_index_dir(tmp_path)
    store = Store(tmp_path, dim=DIM)
    first = rows(["a", "b"], 1)
    store.upsert(first, whole_files=[row["path"] for row in first])
    assert store.count() == 2
    store.upsert(first, whole_files=[row["path"] for row in first])  # the same files again
    assert store.count() == 2
    again = rows(["b", "c"], 2)  # one known file, one new
    store.upsert(again, whole_files=[row["path"] for row in again])
    assert store.count() == 3
    stored = {row["path"]: row["hash"] for row in store.table.search().limit(None).to_arrow().to_pylist()}
    assert stored == {"/f/a.md": "a", "/f/b.md": "b", "/f/c.md": "c"}
    seeds = {row["path"]: row["vector"] for row in again}
    kept = store.rows_for_path("/f/b.md")
    assert len(kept) == 1 and np.allclose(kept[0]["vector"], seeds["/f/b.md"])


def test_a_compaction_drops_the_copies_that_write_backs_replaced(tmp_path, monkeypatch):
    """Write-backs delete the old copy of each row they replace, and LanceDB's optimize alone keeps
    those copies (with their cache) until a tenth of the data file is deleted; past DEAD_ROWS_SHARE,
    maintain rewrites enough refined rows to carry the file over, and the copies go.  Every row
    keeps its latest values."""
    from recall_cli.storage import growth

    db = tmp_path / "db"
    prepare_index_dir(db)
    store = Store(db, dim=DIM)
    store.upsert(
        rows([f"done{i}" for i in range(300)], 1, refined=True) + cached_rows([f"old{i}" for i in range(100)], 2)
    )
    store.create_vector_index()  # as on a large index: new fragments are then not merged into the indexed one
    store.maintain(keep_versions_s=0)
    for batch in range(4):  # 20 of 400 rows replaced: 5%, past DEAD_ROWS_SHARE, short of LanceDB's 10%
        store.upsert(refined_rows([f"old{batch * 5 + i}" for i in range(5)], 100 + batch))
    assert growth.rows_to_rewrite(store.table)
    with_copies = growth.table_bytes(db)
    monkeypatch.setattr(growth, "DEAD_ROWS_SHARE", 1.0)  # never: LanceDB's optimize alone
    store.maintain(keep_versions_s=0)
    assert growth.rows_to_rewrite(store.table) == [] and dead_rows(store) == 20
    monkeypatch.setattr(growth, "DEAD_ROWS_SHARE", 0.03)
    store.maintain(keep_versions_s=0)
    assert dead_rows(store) == 0
    assert growth.table_bytes(db) < with_copies - 20 * 2000  # the replaced copies' cache is gone
    table = Store(db).table.to_arrow()
    assert sorted(table.column("id").to_pylist()) == sorted(
        [f"/f/done{i}.md\x1f0" for i in range(300)] + [f"/f/old{i}.md\x1f0" for i in range(100)]
    )
    refined = dict(zip(table.column("path").to_pylist(), table.column("refined").to_pylist(), strict=True))
    assert all(refined[f"/f/old{i}.md"] for i in range(20)) and not any(
        refined[f"/f/old{i}.md"] for i in range(20, 100)
    )
    cache = dict(zip(table.column("path").to_pylist(), table.column("cache").to_pylist(), strict=True))
    assert all(cache[f"/f/old{i}.md"] is None for i in range(20)) and cache["/f/old50.md"] is not None


def dead_rows(store) -> int:
    """Rows deleted but still inside their data fragments (row addresses past the live ones)."""
    addresses = store.table.search().select(["_rowaddr"]).limit(None).to_arrow().column("_rowaddr").to_numpy()
    fragments, offsets = addresses >> 32, addresses & 0xFFFFFFFF
    return sum(int(offsets[fragments == f].max()) + 1 - int((fragments == f).sum()) for f in np.unique(fragments))


def test_a_fragment_past_lancedbs_own_threshold_is_left_to_it(tmp_path):
    from recall_cli.storage import growth

    db = tmp_path / "db"
    prepare_index_dir(db)
    store = Store(db, dim=DIM)
    store.upsert(
        rows([f"done{i}" for i in range(300)], 1, refined=True) + cached_rows([f"old{i}" for i in range(100)], 2)
    )
    store.create_vector_index()
    store.maintain(keep_versions_s=0)
    store.upsert(refined_rows([f"old{i}" for i in range(50)], 3))  # 50 of 400 replaced: past a tenth
    assert growth.rows_to_rewrite(store.table) == []  # nothing to add: LanceDB's optimize rewrites it
    store.maintain(keep_versions_s=0)
    assert dead_rows(store) == 0 and store.count() == 400


def test_a_first_fill_gets_its_keyword_indexes_without_rewriting_its_data_then_compacts_as_usual(tmp_path):
    # a new index's first run appends a fragment per write: maintenance indexes every row for
    # keyword search but leaves the data files (with their INT4 caches) as written
    prepare_index_dir(tmp_path)
    store = Store(tmp_path, dim=DIM)
    for start in range(0, 60, 20):
        batch = rows([f"note{i}" for i in range(start, start + 20)], start)
        store.upsert(batch, whole_files=[row["path"] for row in batch])
    data = tmp_path / "units.lance" / "data"
    written = set(data.iterdir())
    store.maintain()
    assert set(data.iterdir()) == written and len(written) == 3
    assert all(index.num_unindexed_rows == 0 for index in store.table.list_indices())
    assert [row["path"] for row in store.keyword_search("note42", 5)] == ["/f/note42.md"]
    store.upsert(rows(["note7"], 99, refined=True))  # a write-back: now a compaction has work
    assert store.table.stats()["fragment_stats"]["num_fragments"] == 4
    store.maintain()
    assert store.table.stats()["fragment_stats"]["num_fragments"] < 4 and store.count() == 60
    assert all(index.num_unindexed_rows == 0 for index in store.table.list_indices())
    assert [row["path"] for row in store.keyword_search("note7", 5)] == ["/f/note7.md"]
