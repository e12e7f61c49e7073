"""The on-demand query server: the first query leaves one behind, later queries use it with
results identical to a query answered in-process, and it goes away when idle, stopped, killed or
when its index is rebuilt.  It answers its owner only, and bad requests get an error reply."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from conftest import SMALL_NOTES as NOTES
from conftest import run_recall, write_files
from watchutil import wait_until

from recall_cli.query import server as server_module

ON = {"RECALL_SERVER_AUTOSTART": "1", "RECALL_SERVER_IDLE": "120"}


@pytest.fixture
def index(tmp_path):
    root, db = tmp_path / "files", tmp_path / "db"
    write_files(root, NOTES)
    assert run_recall("index", root, "--db", db, "--full", "-q").returncode == 0  # nothing left to refine
    yield root, db
    pid = (status(db) or {}).get("pid")
    run_recall("server", "stop", "--db", db)
    if pid:
        wait_until(lambda: gone(pid), 30, message="the server to stop")


def status(db) -> dict | None:
    done = run_recall("server", "status", "--db", db, "--json")
    return json.loads(done.stdout) if done.returncode == 0 else None


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as handle:
            return "\nState:\tZ" in handle.read()  # a zombie has exited
    except FileNotFoundError:
        return True


def query(db, *args, env=None):
    done = run_recall("query", *args, "--db", db, env=env)
    assert done.returncode in (0, 1), done.stderr
    return done


def test_the_first_query_leaves_a_server_that_later_queries_use(index):
    root, db = index
    first = query(db, "kayak", "--json", env=ON)
    server = wait_until(lambda: status(db), 60, message="a server")
    assert server["kind"] == "on-demand" and server["queries"] == 0 and server["memory_mib"] > 0
    second = query(db, "kayak", "--json", env=ON)
    assert second.stdout == first.stdout
    again = status(db)
    assert again["pid"] == server["pid"] and again["queries"] == 1


def test_no_server_when_turned_off(index):
    root, db = index
    query(db, "kayak", env={"RECALL_SERVER_AUTOSTART": "0"})
    query(db, "kayak", "--no-server", env=ON)
    assert status(db) is None and not (db / "query.sock").exists()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One index and one server for the parity cases (a server costs a model load)."""
    base = tmp_path_factory.mktemp("served")
    root, db = base / "files", base / "db"
    write_files(root, NOTES)
    assert run_recall("index", root, "--db", db, "--full", "-q").returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "recall_cli", "server", "run", "--db", str(db)])
    wait_until(lambda: status(db), 60, message="the server")
    yield root, db
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.parametrize(
    "args",
    [
        ("kayak", "-n", "2"),
        ("lake", "--offset", "1", "-n", "2"),
        ("water", "--type", "text", "--in", "{root}/trips"),
        ("apple", "--since", "2000-01-01", "--until", "2999-12-31"),
        ("boat", "--min-score", "0.05"),
        ("fibonacci", "--semantic"),
        ("fibonacci", "--keyword"),
        ("boat", "--name", "*.MD"),
        ('"red kayak" name:kayak',),
        ("taxes", "--no-refine", "-l"),
        ("taxes", "--exact", "--budget", "0.2", "-0"),
        ("recipe", "--jsonl"),
        ("", "--like", "{root}/trips/kayak.md", "--json"),
    ],
)
def test_every_option_gives_the_same_bytes_through_the_server(served, args):
    root, db = served
    args = [arg.format(root=root) for arg in args]
    if not args[0]:
        args = args[1:]  # --like alone
    local = query(db, *args, "--no-server")
    before = status(db)["queries"]
    through_server = query(db, *args)
    assert status(db)["queries"] == before + 1  # answered by the server, not in-process
    assert (through_server.returncode, through_server.stdout) == (local.returncode, local.stdout)


def test_the_server_exits_when_idle_and_removes_its_socket(index):
    root, db = index
    proc = subprocess.Popen([sys.executable, "-m", "recall_cli", "server", "run", "--db", str(db), "--idle", "1"])
    wait_until(lambda: status(db), 60, message="the server")
    assert proc.wait(timeout=60) == 0
    assert not (db / "query.sock").exists()


def test_a_killed_server_leaves_queries_answering_and_is_replaced(index):
    root, db = index
    first = query(db, "train", "--json", env=ON)
    pid = wait_until(lambda: status(db), 60, message="a server")["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: gone(pid), 30, message="the kill")
    assert (db / "query.sock").exists()  # stale: nobody listens
    again = query(db, "train", "--json", env=ON)
    assert again.stdout == first.stdout
    replaced = wait_until(lambda: (found := status(db)) and found["pid"] != pid and found, 60, message="a new server")
    assert replaced["queries"] == 0


def test_a_watch_takes_over_from_an_on_demand_server(index):
    root, db = index
    first = query(db, "kayak", "--json", env=ON)
    on_demand = wait_until(lambda: status(db), 60, message="an on-demand server")
    assert on_demand["kind"] == "on-demand"
    watch = subprocess.Popen([sys.executable, "-m", "recall_cli", "watch", str(root), "--db", str(db), "-q"])
    try:
        wait_until(lambda: gone(on_demand["pid"]), 60, message="the on-demand server to step aside")
        served_by_watch = wait_until(
            lambda: (found := status(db)) and found["kind"] == "recall watch" and found, 120, message="the watcher"
        )
        assert served_by_watch["pid"] == watch.pid  # one server: the watcher's
        again = query(db, "kayak", "--json", env=ON)
        assert json.loads(again.stdout)[0]["path"] == json.loads(first.stdout)[0]["path"]
        assert status(db)["queries"] == 1 and status(db)["pid"] == watch.pid  # answered by the watcher
    finally:
        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=60) == 0


def test_a_rebuilt_index_stops_its_server(index):
    root, db = index
    proc = subprocess.Popen([sys.executable, "-m", "recall_cli", "server", "run", "--db", str(db)])
    wait_until(lambda: status(db), 60, message="the server")
    assert run_recall("index", "--rebuild", root, "--db", db, "-q").returncode == 0
    assert proc.wait(timeout=30) == 0


def test_only_one_server_per_index(index):
    root, db = index
    proc = subprocess.Popen([sys.executable, "-m", "recall_cli", "server", "run", "--db", str(db)])
    wait_until(lambda: status(db), 60, message="the server")
    second = run_recall("server", "run", "--db", db, timeout=60)
    assert second.returncode == 0 and status(db)["pid"] == proc.pid  # the second one gave way
    assert run_recall("server", "stop", "--db", db).returncode == 0
    assert proc.wait(timeout=30) == 0


def raw_request(db, data: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(db / "query.sock"))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    return json.loads(b"".join(chunks))


@pytest.fixture
def in_process_server(index):
    root, db = index
    server = server_module.QueryServer(db, on_demand=True)
    server.start()
    yield db, server
    server.close()


def test_bad_requests_get_an_error_reply_and_the_server_goes_on(in_process_server):
    db, server = in_process_server
    assert "bad request" in raw_request(db, b"{not json\n")["error"]
    assert "bad request" in raw_request(db, b"[1, 2]\n")["error"]
    assert "too large" in raw_request(db, b"x" * (server_module.MAX_REQUEST_BYTES + 100))["error"]
    bad_option = {"protocol": 1, "op": "query", "texts": ["kayak"], "limit": "many"}
    assert "bad request" in raw_request(db, json.dumps(bad_option).encode() + b"\n")["error"]
    good = server_module.request(db, {"op": "query", "texts": ["kayak"], "limit": 1})
    assert good["ok"] and good["results"][0][0]["path"].endswith("kayak.md")


def test_another_users_connection_is_refused(in_process_server, monkeypatch):
    db, server = in_process_server
    monkeypatch.setattr(server_module, "peer_uid", lambda conn: os.getuid() + 1)
    reply = server_module.request(db, {"op": "query", "texts": ["kayak"]})
    assert reply["ok"] is False and "refused" in reply["error"] and server.queries == 0
    monkeypatch.setattr(server_module, "peer_uid", lambda conn: os.getuid())
    assert server_module.request(db, {"op": "query", "texts": ["kayak"]})["ok"]


def test_the_peer_uid_is_read_from_the_socket(in_process_server):
    db, server = in_process_server
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(db / "query.sock"))
        assert server_module.peer_uid(sock) == os.getuid()


def dead_rows_and_bytes(table) -> tuple[int, int]:
    """(rows deleted but still on disk, bytes of the current version's files)."""
    latest = table.list_versions()[-1]["metadata"]
    return int(latest["total_deletion_file_rows"]), int(latest["total_files_size"])


def test_an_idle_server_compacts_what_its_write_backs_left(tmp_path, monkeypatch):
    import lancedb

    root, db = tmp_path / "files", tmp_path / "db"
    write_files(root, NOTES)
    # early exit at block 2: every row waits for refinement, so each query writes back
    assert run_recall("index", root, "--db", db, "--exit-policy", "fixed:2", "-q").returncode == 0
    monkeypatch.setattr(server_module, "COMPACT_EVERY_S", 3600.0)
    server = server_module.QueryServer(db, on_demand=True)
    server.start()
    try:
        for folder in ("trips", "home", "code"):  # each query refines (and writes back) one folder's files
            within = str(root / folder)
            assert server_module.request(db, {"op": "query", "texts": ["x"], "refine": "exact", "within": within})["ok"]
        table = lancedb.connect(str(db)).open_table("units")
        left = dead_rows_and_bytes(table)
        assert server.writes_since_compaction >= 2 and left[0] > 0  # the rows write-backs replaced
        monkeypatch.setattr(server_module, "COMPACT_EVERY_S", 0.0)  # due now: the server is idle
        wait_until(lambda: server.writes_since_compaction == 0, 30, message="the compaction")
    finally:
        server.close()
    table = lancedb.connect(str(db)).open_table("units")
    dead, size = dead_rows_and_bytes(table)
    assert dead == 0 and size < left[1]
    assert table.count_rows() == sum(1 for _ in NOTES) and table.count_rows("refined") == len(NOTES)


def test_a_server_that_is_never_idle_compacts_once_write_backs_pass_the_growth_bound(tmp_path, monkeypatch):
    from recall_cli.storage import growth
    from recall_cli.storage.layout import table_files

    root, db = tmp_path / "files", tmp_path / "db"
    write_files(root, NOTES)
    assert run_recall("index", root, "--db", db, "--exit-policy", "fixed:2", "-q").returncode == 0
    monkeypatch.setattr(server_module, "COMPACT_EVERY_S", 3600.0)  # never idle long enough
    monkeypatch.setattr(growth, "GROWTH_FLOOR_BYTES", 0)
    server = server_module.QueryServer(db, on_demand=True)
    server.start()
    try:
        monkeypatch.setattr(growth, "GROWTH_BOUND", 10.0)  # far away: a write-back leaves its version
        within = str(root / "trips")
        assert server_module.request(db, {"op": "query", "texts": ["x"], "refine": "exact", "within": within})["ok"]
        wait_until(lambda: server.writes_since_compaction == 1, 30, message="the write-back")
        assert server.compactions == 0 and table_files(db)["versions"] > 1
        monkeypatch.setattr(growth, "GROWTH_BOUND", 0.0)  # any growth passes it
        within = str(root / "home")
        assert server_module.request(db, {"op": "query", "texts": ["x"], "refine": "exact", "within": within})["ok"]
        wait_until(lambda: server.compactions == 1, 30, message="the compaction")
        assert server.writes_since_compaction == 0  # nothing left for an idle compaction
    finally:
        server.close()
    assert table_files(db)["versions"] == 1  # no old version kept
    assert growth.compacted_bytes(db) == growth.table_bytes(db)


def waiting(db) -> int:
    done = run_recall("stats", "--db", db, "--json")
    return json.loads(done.stdout)["early_exit"]["waiting_refinement"]


def served_for(db, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "recall_cli", "server", "run", "--db", str(db), "--idle", "120"],
        env=dict(os.environ, **(env or {})),
    )


def test_an_idle_server_refines_the_rows_that_stopped_early(tmp_path):
    import lancedb
    import numpy as np

    root, db, full_db = tmp_path / "files", tmp_path / "db", tmp_path / "full"
    write_files(root, NOTES)
    assert run_recall("index", root, "--db", db, "--exit-policy", "fixed:2", "-q").returncode == 0
    assert run_recall("index", root, "--db", full_db, "--full", "-q").returncode == 0
    assert waiting(db) == len(NOTES)  # every row stopped at block 2
    proc = served_for(db)
    try:
        wait_until(lambda: waiting(db) == 0, 120, interval=0.5, message="the idle refinement")
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    def vectors(path):
        rows = lancedb.connect(str(path)).open_table("units").to_arrow().to_pylist()
        return {(row["path"], row["chunk"]): np.asarray(row["vector"]) for row in rows}

    refined, full = vectors(db), vectors(full_db)
    assert refined.keys() == full.keys()
    for key, vector in refined.items():  # the full-depth embeddings (INT4 rounding aside)
        assert float(vector @ full[key]) > 0.99, key


def test_a_server_told_not_to_refine_leaves_the_rows_as_they_are(tmp_path):
    import time

    from recall_cli.query.idle import IDLE_AFTER

    root, db = tmp_path / "files", tmp_path / "db"
    write_files(root, NOTES)
    assert run_recall("index", root, "--db", db, "--exit-policy", "fixed:2", "-q").returncode == 0
    proc = served_for(db, {"RECALL_SERVER_REFINE": "0"})
    try:
        wait_until(lambda: status(db), 60, message="the server")
        time.sleep(IDLE_AFTER + 3)  # past the moment an idle server starts refining
        assert waiting(db) == len(NOTES)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
