"""Warm queries: a running watcher answers `recall query` over <db>/query.sock, with the same
results as a cold query, without the client importing torch/lancedb/numpy/rich/typer."""

from __future__ import annotations

import json
import os
import socket
import stat

import pytest
from conftest import run_recall, write_files
from watchutil import ThreadWatcher, converged, wait_until, write_text

from recall_cli.query.server import socket_path

NOTES = {
    "notes/kayak.md": "Paddling the red kayak across the lake at sunset, the water was calm.",
    "notes/recipe.txt": "Grandma's apple pie: flour, butter, sliced apples, cinnamon and sugar.",
    "notes/train.txt": "Train timetable from Berlin to Munich, departures every hour.",
    "code/fib.py": "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "household.txt": "Household documents: insurance, tax returns and the car's service history.",
}
QUERIES = "boat on a lake\napple dessert\nrailway schedule\nrecursive function\ntaxes\n"
COLD = {"RECALL_NO_SERVER": "1"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("served")
    root, db = base / "files", base / "db"
    write_files(root, NOTES)
    with ThreadWatcher(root, db, serve=True) as watched:
        wait_until(lambda: converged(root, db, watched), 60)
        yield root, db, watched


def query(db, *args, stdin=None, env=None):
    return run_recall("query", *args, "--db", db, stdin=stdin, env=env)


def test_warm_results_equal_cold_results(served):
    root, db, _ = served
    for args in (
        ("-", "--json"),
        ("-", "--jsonl", "-n", "2", "--offset", "1"),
        ("-", "--json", "--type", "text", "--in", root / "notes"),
        ("-", "-l"),
    ):
        warm = query(db, *args, stdin=QUERIES)
        cold = query(db, *args, stdin=QUERIES, env=COLD)
        assert warm.returncode == cold.returncode == 0, (warm.stderr, cold.stderr)
        assert warm.stdout == cold.stdout and warm.stdout.strip()
    results = json.loads(query(db, "kayak", "--json").stdout)
    assert results[0]["path"].endswith("kayak.md") and results[0]["rank"] == 1
    # the query language and refinement options are forwarded to the watcher
    for args in (
        ('"boat" + 2:"lake" - "train"', "--json", "--since", "2000-01-01", "--until", "2999-12-31"),
        ("-", "--jsonl", "--min-score", "0.1", "--exact", "--budget", "1"),
        ("--like", root / "notes/kayak.md", "--json", "--no-refine", "-n", "2"),
    ):
        stdin = QUERIES if "-" in args else None
        warm = query(db, *args, stdin=stdin)
        cold = query(db, *args, stdin=stdin, env=COLD)
        assert warm.returncode == cold.returncode == 0, (warm.stderr, cold.stderr)
        assert warm.stdout == cold.stdout and warm.stdout.strip()


def test_warm_client_never_imports_heavy_modules(served):
    _, db, _ = served
    done = run_recall("query", "red kayak", "--db", db, "--json", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert done.returncode == 0 and json.loads(done.stdout)
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time")}
    assert imported, done.stderr[:500]
    for heavy in ("torch", "lancedb", "numpy", "rich", "typer", "pyarrow"):
        assert heavy not in imported, f"{heavy} imported on the warm path"


def test_errors_and_exit_codes_match_cold(served):
    _, db, _ = served
    warm = query(db, "kayak", "--type", "smell")
    cold = query(db, "kayak", "--type", "smell", env=COLD)
    assert warm.returncode == cold.returncode == 2
    assert warm.stderr == cold.stderr and "unknown --type" in warm.stderr
    warm = query(db, "kayak", "--in", "/nowhere")
    assert warm.returncode == 1 and warm.stdout == ""


def test_socket_is_private_and_follows_new_files(served):
    root, db, watched = served
    info = os.stat(socket_path(db))
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o700
    write_text(root / "notes/volcano.md", "We hiked up the volcano and saw lava and ash.")
    wait_until(lambda: converged(root, db, watched), 60)
    done = query(db, "volcanic eruption lava", "-l", "-n", "1")
    assert done.returncode == 0 and done.stdout.strip().endswith("volcano.md")


def test_stale_socket_falls_back_to_a_cold_query(tmp_path, cli):
    root = tmp_path / "files"
    write_files(root, NOTES)
    assert cli("index", root).exit_code == 0
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # what kill -9 leaves behind
    stale.bind(socket_path(cli.db))
    stale.close()
    done = run_recall("query", "kayak", "--db", cli.db, "-l", "-n", "1")
    assert done.returncode == 0 and done.stdout.strip().endswith("kayak.md")
