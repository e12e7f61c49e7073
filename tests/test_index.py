"""`recall index` on a real folder: the right rows, and the right changes between runs."""

import json
import os
import shutil

import lancedb
import pytest
from conftest import run_recall, write_files

NOTES = {
    "notes/kayak.md": "# Lake trip\nPaddling the red kayak across the lake at sunset, the water was calm.",
    "notes/recipe.txt": "Grandma's apple pie: flour, butter, sliced apples, cinnamon and sugar. Bake for 45 minutes.",
    "notes/train.html": "<html><script>var tracking=1</script><body><p>Train timetable from Berlin to Munich, "
    "departures every hour.</p></body></html>",
    "code/fib.py": 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'
    "    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "README": "Household documents: insurance, tax returns and the car's service history.",
    ".gitignore": "build/\n",
    "build/generated.txt": "generated output that must not be indexed",
    ".ignore": "*.log\n",
    "debug.log": "log lines that must not be indexed",
    "drafts/.recallignore": "private*\n",
    "drafts/private-diary.md": "a private diary that must not be indexed",
    "drafts/shopping.md": "Shopping list: milk, eggs, bread, coffee beans.",
    ".hidden-note.md": "a hidden note",
    "node_modules/lib/readme.md": "dependency docs",
    "data.bin": bytes(range(256)) * 8,
}

EXPECTED = {"notes/kayak.md", "notes/recipe.txt", "notes/train.html", "code/fib.py", "README", "drafts/shopping.md"}


def index_json(cli, root, *extra):
    result = cli("index", root, "--json", *extra)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def table_rows(db_dir):
    table = lancedb.connect(str(db_dir)).open_table("units")
    return table.to_arrow().to_pylist()


def indexed_paths(db_dir, root):
    return {os.path.relpath(row["path"], root) for row in table_rows(db_dir)}


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "files"
    write_files(root, NOTES)
    return root


def test_first_index_gives_one_row_per_unit_of_each_eligible_file(cli, db_dir, tree):
    summary = index_json(cli, tree)
    assert summary["added"] == len(EXPECTED) and summary["failed"] == 0
    assert summary["skipped"] == 1  # data.bin: unknown type
    rows = table_rows(db_dir)
    assert indexed_paths(db_dir, tree) == EXPECTED
    assert len({row["id"] for row in rows}) == len(rows)  # no duplicates
    for row in rows:
        assert row["modality"] == "text" and row["model"] == "minilm"
        assert len(row["vector"]) == 384 and row["refined"] and row["exit_block"] == row["depth"] == 6
        assert row["root"] == os.path.realpath(tree) and len(row["hash"]) == 32
        assert row["size"] == os.path.getsize(row["path"])
    html_row = next(row for row in rows if row["path"].endswith("train.html"))
    assert "Berlin to Munich" in html_row["snippet"] and "tracking" not in html_row["snippet"]
    assert (db_dir.stat().st_mode & 0o777) == 0o700  # private to the user


def test_rename_delete_modify_and_unchanged_runs(cli, db_dir, tree):
    index_json(cli, tree)
    before = {row["path"]: row for row in table_rows(db_dir)}

    # rename (into another directory): rows follow without re-encoding
    (tree / "boats").mkdir()
    shutil.move(tree / "notes/kayak.md", tree / "boats/kayak-trip.md")
    summary = index_json(cli, tree)
    assert (summary["moved"], summary["removed"], summary["units_encoded"]) == (1, 1, 0)
    after = {row["path"]: row for row in table_rows(db_dir)}
    moved = after[str(tree / "boats/kayak-trip.md")]
    assert moved["vector"] == before[str(tree / "notes/kayak.md")]["vector"]
    assert str(tree / "notes/kayak.md") not in after

    # delete: its rows leave the index
    os.remove(tree / "notes/recipe.txt")
    summary = index_json(cli, tree)
    assert summary["removed"] == 1
    assert "notes/recipe.txt" not in indexed_paths(db_dir, tree)

    # modify: re-encoded, old rows replaced, not duplicated
    (tree / "code/fib.py").write_text("def factorial(n):\n    return 1 if n < 2 else n * factorial(n - 1)\n")
    summary = index_json(cli, tree)
    assert (summary["updated"], summary["units_encoded"]) == (1, 1)
    fib_rows = [row for row in table_rows(db_dir) if row["path"].endswith("fib.py")]
    assert len(fib_rows) == 1 and "factorial" in fib_rows[0]["snippet"]

    # touch without change: no re-encode; nothing at all when truly unchanged
    os.utime(tree / "README", ns=(1, 1))
    summary = index_json(cli, tree)
    assert summary["units_encoded"] == 0 and summary["updated"] == 0
    version = lancedb.connect(str(db_dir)).open_table("units").version
    summary = index_json(cli, tree)
    assert summary["unchanged"] == summary["scanned"] == len(EXPECTED) and summary["skipped"] == 0
    assert lancedb.connect(str(db_dir)).open_table("units").version == version  # no write at all


def test_a_copy_reuses_embeddings_and_both_paths_are_indexed(cli, db_dir, tree):
    index_json(cli, tree)
    shutil.copy(tree / "notes/recipe.txt", tree / "notes/recipe-copy.txt")
    summary = index_json(cli, tree)
    assert summary["moved"] == 1 and summary["units_encoded"] == 0
    assert {"notes/recipe.txt", "notes/recipe-copy.txt"} <= indexed_paths(db_dir, tree)


def test_long_file_is_split_into_chunks_and_found_by_its_end(cli, db_dir, tmp_path):
    root = tmp_path / "long"
    filler = " ".join(f"Paragraph {i} talks about budgets, meetings and quarterly planning." for i in range(150))
    write_files(
        root, {"minutes.md": filler + "\n\nFinally the committee adopted a golden retriever puppy as office mascot."}
    )
    summary = index_json(cli, root)
    assert summary["units_encoded"] > 3
    result = cli("query", "office dog mascot", "--jsonl", "-n", "1")
    top = json.loads(result.stdout.splitlines()[0])
    assert top["path"].endswith("minutes.md") and "golden retriever" in top["snippet"]


def test_several_roots_in_one_index_and_deletions_stay_within_a_root(cli, db_dir, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    write_files(first, {"one.md": "apples and pears"})
    write_files(second, {"two.md": "volcanoes and lava"})
    index_json(cli, first)
    index_json(cli, second)
    summary = index_json(cli, first)  # indexing root a again must not drop root b's files
    assert summary["removed"] == 0
    assert {os.path.basename(row["path"]) for row in table_rows(db_dir)} == {"one.md", "two.md"}


def test_missing_root_is_an_error_not_a_mass_delete(cli, db_dir, tree):
    index_json(cli, tree)
    moved_away = tree.parent / "unmounted"
    tree.rename(moved_away)
    result = cli("index", tree)
    assert result.exit_code == 2 and "does not exist" in result.stderr
    assert len(indexed_paths(db_dir, tree)) == len(EXPECTED)


def test_other_model_on_existing_index_is_a_clear_error(cli, db_dir, tree):
    index_json(cli, tree)
    result = cli("index", tree, "--model", "imagebind-huge")
    assert result.exit_code == 2
    assert "built with model 'minilm'" in result.stderr and "Traceback" not in result.stderr


def test_unknown_model_name_is_rejected(cli, tree):
    result = cli("index", tree, "--model", "gpt-17")
    assert result.exit_code == 2 and "unknown model 'gpt-17'" in result.stderr


def test_unchanged_reindex_imports_neither_torch_nor_lancedb(db_dir, tree):
    assert run_recall("index", tree, "--db", db_dir).returncode == 0
    probe = (
        "import sys; from recall_cli.cli.commands import app\n"
        "try:\n    app(['index', sys.argv[1], '--db', sys.argv[2], '-q'])\n"
        "except SystemExit as done:\n    code = done.code\n"
        "print(code, 'torch' in sys.modules, 'lancedb' in sys.modules)"
    )
    import subprocess
    import sys

    output = subprocess.run(
        [sys.executable, "-c", probe, str(tree), str(db_dir)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert output == ["0", "False", "False"]


def test_a_bad_file_is_recorded_and_does_not_stop_the_run(cli, db_dir, tree):
    (tree / "notes/binary.txt").write_bytes(b"\x00\x01\x02" * 100)
    result = cli("index", tree, "--json")
    assert result.exit_code == 3  # some files failed, the rest are indexed
    summary = json.loads(result.stdout)
    assert summary["failed"] == 1 and summary["added"] == len(EXPECTED)
    assert summary["failures"][0]["path"].endswith("binary.txt")
    assert "binary" in summary["failures"][0]["error"]
    stats = json.loads(cli("stats", "--json").stdout)
    assert stats["files_by_status"]["error"] == 1 and "binary" in stats["failures"][0]["error"]
    # fixed file is picked up; an unchanged failed file is only retried on request
    assert cli("index", tree, "--json").exit_code == 0
    result = cli("index", tree, "--json", "--retry-failed")
    assert json.loads(result.stdout)["failed"] == 1
