"""An index run killed with SIGKILL leaves an index that works, and the next run finishes the job."""

import json
import os
import signal
import subprocess
import sys
import time

import lancedb

from conftest import REPO, Cli, write_files


def rows_by_path(db):
    rows = lancedb.connect(str(db)).open_table("units").to_arrow().select(["id", "path", "hash"]).to_pylist()
    return rows


def test_kill_9_mid_run_then_rerun_converges(tmp_path):
    root = tmp_path / "files"
    write_files(root, {f"notes/n{i:03d}.md": f"Note {i}: " + "words about topic %d. " % i * (1 + i % 5)
                       for i in range(240)})
    db = tmp_path / "db"
    process = subprocess.Popen([sys.executable, "-m", "recall_cli", "index", str(root), "--db", str(db), "-q"],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (db / "units.lance").exists():
        time.sleep(0.05)
    time.sleep(0.5)  # let it get into the middle of writing batches
    assert process.poll() is None, "index finished before it could be interrupted; make the corpus bigger"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    cli = Cli(db)
    half = rows_by_path(db)
    assert len({row["id"] for row in half}) == len(half)  # no duplicates even mid-way
    assert cli("query", "topic 7", "-n", "3").exit_code in (0, 1)  # the interrupted index answers

    result = cli("index", root, "--json")
    assert result.exit_code == 0, result.stderr
    rows = rows_by_path(db)
    assert len({row["id"] for row in rows}) == len(rows)
    assert {row["path"] for row in rows} == {str(path) for path in root.rglob("*.md")}
    summary = json.loads(cli("index", root, "--json").stdout)
    assert summary["unchanged"] == 240 and summary["units_encoded"] == 0
