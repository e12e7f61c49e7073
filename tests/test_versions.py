"""Indexes made by another recall (older or newer schema), by another model, or left damaged:
a clear one-line message with a path forward (migrate automatically, or `recall index --rebuild`),
never a traceback and never silently mixed vectors."""

import errno
import json
import sqlite3

import lancedb
import numpy as np
import pyarrow as pa
import pytest
from conftest import assert_clear_error, write_files

from recall_cli.storage.manifest import MANIFEST_NAME, MIGRATIONS, SCHEMA_VERSION

NOTES = {
    "kayak.md": "Paddling the red kayak across the lake at sunset, the water was calm.",
    "pie.txt": "Grandma's apple pie: flour, butter, sliced apples, cinnamon and sugar.",
    "train.txt": "Train timetable from Berlin to Munich, departures every hour.",
    "taxes.txt": "Household documents: insurance, tax returns and the car's service history.",
}


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "files"
    write_files(root, NOTES)
    return root


def index_ok(cli, root, *extra):
    result = cli("index", root, "--json", *extra)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def top_path(cli, text="kayak on a lake"):
    result = cli("query", text, "-l")
    assert result.exit_code == 0, result.stderr
    return result.stdout.splitlines()[0]


def user_version(db_dir):
    conn = sqlite3.connect(db_dir / MANIFEST_NAME)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def rewrite_table(db_dir, change):
    """Replace the units table by change(arrow table) (what another recall might have left)."""
    db = lancedb.connect(str(db_dir))
    data = change(db.open_table("units").to_arrow())
    db.drop_table("units")
    db.create_table("units", data=data)


# --- schema versions -----------------------------------------------------------------------


def test_manifest_from_a_newer_recall_is_refused_then_rebuilt(cli, db_dir, tree):
    index_ok(cli, tree)
    conn = sqlite3.connect(db_dir / MANIFEST_NAME)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    for args in (("index", tree), ("query", "kayak"), ("stats",)):
        assert_clear_error(cli(*args), "newer recall", "upgrade recall", "recall index --rebuild")
    assert user_version(db_dir) == SCHEMA_VERSION + 1  # never touched
    summary = index_ok(cli, tree, "--rebuild")
    assert summary["added"] == len(NOTES)
    assert user_version(db_dir) == SCHEMA_VERSION
    assert top_path(cli).endswith("kayak.md")


def old_manifest(db_dir, version: int) -> None:
    """Turn the index's manifest into what a recall of schema `version` made: a new SQLite file
    with only the first `version` migrations, holding the rows (of the columns) it knew."""
    path = db_dir / MANIFEST_NAME
    current = sqlite3.connect(path)
    old_path = db_dir / "old.sqlite"
    old = sqlite3.connect(old_path, isolation_level=None)
    for script in MIGRATIONS[:version]:
        old.executescript(script)
    old.execute(f"PRAGMA user_version = {version}")
    tables = [row[0] for row in old.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        columns = [row[1] for row in old.execute(f"PRAGMA table_info({table})")]
        names = ", ".join(columns)
        rows = current.execute(f"SELECT {names} FROM {table}").fetchall()
        old.executemany(f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})", rows)
    old.close()
    current.close()
    for suffix in ("-wal", "-shm"):
        (db_dir / (MANIFEST_NAME + suffix)).unlink(missing_ok=True)
    old_path.replace(path)


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
def test_manifest_from_an_older_recall_is_migrated_in_place(cli, db_dir, tree, version):
    index_ok(cli, tree, "--exit-policy", "fixed:3")  # coarse rows with caches: real exit records
    before = json.loads(cli("stats", "--json").stdout)
    old_manifest(db_dir, version)
    assert user_version(db_dir) == version

    stats = json.loads(cli("stats", "--json").stdout)  # the first command migrates
    assert user_version(db_dir) == SCHEMA_VERSION
    assert stats["files"] == before["files"] == len(NOTES) and stats["units"] == before["units"]
    # what later schemas record is rebuilt from the vector table, not left empty
    assert stats["early_exit"] == before["early_exit"]
    assert stats["early_exit"]["units"] == stats["units"]
    assert top_path(cli).endswith("kayak.md")
    (tree / "new.txt").write_text("A new note about mountain hiking boots.")
    summary = index_ok(cli, tree)
    assert summary["added"] == 1 and summary["unchanged"] == len(NOTES)
    assert top_path(cli, "hiking boots").endswith("new.txt")


# --- the vector table does not match the index ----------------------------------------------


def test_vector_table_missing_a_column_is_refused_then_rebuilt(cli, db_dir, tree):
    index_ok(cli, tree)
    rewrite_table(db_dir, lambda data: data.drop_columns(["adapter_version"]))
    (tree / "new.txt").write_text("A new note about mountain hiking boots.")
    for args in (("index", tree), ("query", "kayak")):
        assert_clear_error(cli(*args), "lacks the column adapter_version", "recall index --rebuild")
    summary = index_ok(cli, tree, "--rebuild")
    assert summary["added"] == len(NOTES) + 1
    assert "adapter_version" in lancedb.connect(str(db_dir)).open_table("units").schema.names
    assert top_path(cli, "hiking boots").endswith("new.txt")


def other_dimension(data: pa.Table) -> pa.Table:
    vectors = np.random.default_rng(0).standard_normal((data.num_rows, 8)).astype(np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 8)
    return data.set_column(data.schema.get_field_index("vector"), "vector", column)


def other_model(data: pa.Table) -> pa.Table:
    return data.set_column(data.schema.get_field_index("model"), "model", pa.array(["imagebind-huge"] * data.num_rows))


@pytest.mark.parametrize(
    "change, commands, phrase",
    [
        (other_dimension, ("index", "query"), "vectors have 8 dimensions but the index's model makes 384"),
        (other_model, ("index",), "rows made by model 'imagebind-huge', not 'minilm'"),
    ],
    ids=["dimension", "model"],
)
def test_vectors_of_another_model_are_never_mixed_in(cli, db_dir, tree, change, commands, phrase):
    index_ok(cli, tree)
    rewrite_table(db_dir, change)
    (tree / "new.txt").write_text("A new note about mountain hiking boots.")
    rows = lancedb.connect(str(db_dir)).open_table("units").count_rows()
    runs = {"index": ("index", tree), "query": ("query", "kayak")}
    for command in commands:
        assert_clear_error(cli(*runs[command]), phrase, "recall index --rebuild")
    assert lancedb.connect(str(db_dir)).open_table("units").count_rows() == rows  # nothing added
    index_ok(cli, tree, "--rebuild")
    models = set(lancedb.connect(str(db_dir)).open_table("units").to_arrow()["model"].to_pylist())
    assert models == {"minilm"}
    assert top_path(cli, "hiking boots").endswith("new.txt")


def test_other_model_on_an_index_points_to_rebuild(cli, tree):
    index_ok(cli, tree)
    assert_clear_error(
        cli("index", tree, "--model", "imagebind-huge"),
        "built with model 'minilm'",
        "recall index --rebuild --model imagebind-huge",
    )


def test_installed_model_of_another_version_points_to_rebuild(cli, db_dir, tree):
    index_ok(cli, tree)
    conn = sqlite3.connect(db_dir / MANIFEST_NAME)
    conn.execute("UPDATE meta SET value = 'all-MiniLM-L6-v2@older' WHERE key = 'model_version'")
    conn.commit()
    conn.close()
    (tree / "new.txt").write_text("A new note about mountain hiking boots.")
    for args in (("index", tree), ("query", "kayak")):
        assert_clear_error(cli(*args), "built with all-MiniLM-L6-v2@older", "recall index --rebuild")
    index_ok(cli, tree, "--rebuild")
    assert top_path(cli).endswith("kayak.md")


# --- half an index, or a damaged one ----------------------------------------------------------


def test_manifest_without_vector_table(cli, db_dir, tree):
    index_ok(cli, tree)
    import shutil

    shutil.rmtree(db_dir / "units.lance")
    # before: `index` saw nothing changed and `query` said "run recall index": a dead end
    for args in (("index", tree), ("query", "kayak")):
        assert_clear_error(cli(*args), "vector table", "missing", "recall index --rebuild")
    index_ok(cli, tree, "--rebuild")
    assert top_path(cli).endswith("kayak.md")


@pytest.mark.parametrize("damage", ["deleted", "emptied"])
def test_vector_table_without_manifest(cli, db_dir, tree, damage):
    index_ok(cli, tree)
    path = db_dir / MANIFEST_NAME
    path.unlink()
    if damage == "emptied":
        sqlite3.connect(path).close()  # a 0-byte file: SQLite would take it for a new manifest
    for args in (("index", tree), ("query", "kayak"), ("stats",)):
        assert_clear_error(cli(*args), "has vectors but", "recall index --rebuild")
    summary = index_ok(cli, tree, "--rebuild")
    assert summary["added"] == len(NOTES)
    assert lancedb.connect(str(db_dir)).open_table("units").count_rows() == len(NOTES)


def test_garbage_manifest_is_reported_as_damaged_then_rebuilt(cli, db_dir, tree):
    index_ok(cli, tree)
    (db_dir / MANIFEST_NAME).write_bytes(bytes(range(256)) * 64)
    for args in (("index", tree), ("query", "kayak"), ("stats",)):
        assert_clear_error(cli(*args), "is damaged", "file is not a database", "recall index --rebuild")
    summary = index_ok(cli, tree, "--rebuild")
    assert summary["added"] == len(NOTES)
    assert top_path(cli).endswith("kayak.md")
    assert sorted(p.name for p in db_dir.parent.iterdir() if p.name.startswith(".")) == []  # no leftovers


def test_rebuild_that_fails_leaves_the_old_index_as_it_was(cli, db_dir, tree, monkeypatch):
    index_ok(cli, tree)
    manifest_bytes = (db_dir / MANIFEST_NAME).read_bytes()
    import recall_cli.index.rebuild as rebuild

    real = rebuild.index_locked

    def fills_the_disk(*args, **kwargs):
        real(*args, **kwargs)  # the new index is complete, then the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rebuild, "index_locked", fills_the_disk)
    assert_clear_error(cli("index", tree, "--rebuild"), "no space left on device", str(db_dir))
    assert (db_dir / MANIFEST_NAME).read_bytes() == manifest_bytes
    assert [p.name for p in db_dir.parent.iterdir() if p.name.startswith(".")] == []  # half-built one gone
    assert top_path(cli).endswith("kayak.md")


def test_rebuild_keeps_the_model_and_waits_for_no_one(cli, db_dir, tree):
    index_ok(cli, tree)
    from recall_cli.storage.lock import WriterLock

    with WriterLock(db_dir, "watch"):
        assert_clear_error(cli("index", tree, "--rebuild"), "being written by recall watch")
    index_ok(cli, tree, "--rebuild")
    stats = json.loads(cli("stats", "--json").stdout)
    assert stats["model"] == "minilm" and stats["files"] == len(NOTES)


def test_damaged_vector_table_is_reported_then_rebuilt(cli, db_dir, tree):
    index_ok(cli, tree)
    for version in (db_dir / "units.lance" / "_versions").iterdir():
        version.write_bytes(bytes(range(256)) * 12)
    (tree / "new.txt").write_text("A new note about mountain hiking boots.")
    for args in (("index", tree), ("query", "kayak")):
        result = cli(*args)
        assert_clear_error(result, "vector table that cannot be opened", "recall index --rebuild")
        assert ".rs:" not in result.stderr  # no Rust source locations
    index_ok(cli, tree, "--rebuild")
    assert top_path(cli, "hiking boots").endswith("new.txt")


def test_rebuild_keeps_the_index_settings_it_is_not_told_to_change(cli, tree):
    """--full and --cache-budget were chosen for this index: a rebuild keeps them (and the model)."""
    index_ok(cli, tree, "--full", "--cache-budget", "3MiB")
    index_ok(cli, tree, "--rebuild")
    early_exit = json.loads(cli("stats", "--json").stdout)["early_exit"]
    assert early_exit["full_depth_index"] and early_exit["cache_budget"] == 3 << 20
    index_ok(cli, tree, "--rebuild", "--cache-budget", "5MiB")  # what the command line says wins
    assert json.loads(cli("stats", "--json").stdout)["early_exit"]["cache_budget"] == 5 << 20
