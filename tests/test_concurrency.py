"""Readers and writers at the same time on one index.

Queries keep answering, correctly and without errors, while `recall index`, `recall watch` and
`recall heal` write.  Writers are serialised or refused: a second `recall index`, a `recall watch`
while an index runs, an index while a watcher runs and a `recall heal --refresh-only` while an
index runs all exit 2 with one line naming the holder ("the index at DB is being written by recall
index (pid N); wait for it to finish or use another --db"); a query that writes back refined rows
holds the lock for a moment and other writers wait for it.  After all of it the index passes the
same integrity checks as after a kill -9 (indexcheck.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, Cli, write_files
from indexcheck import Checker, recorded, versions
from watchutil import wait_until

from recall_cli.storage.lock import WriterLock

TOPICS = [
    "kayak trips on mountain lakes",
    "baking sourdough bread",
    "train timetables in Europe",
    "jazz piano chords",
    "marathon training plans",
    "knitting wool sweaters",
    "astronomy and telescopes",
    "repairing a bicycle chain",
]
BUSY = re.compile(
    r"^recall: the index at .+ is being written by recall (index|watch|heal) \(pid \d+\); "
    r"wait for it to finish or use another --db$"
)


def topic_notes(per_topic: int = 4) -> dict[str, str]:
    """What is indexed before the writers start; each query below has its answers here."""
    notes = {}
    for t, topic in enumerate(TOPICS):
        for k in range(per_topic):
            notes[f"n{t}_{k}.md"] = f"Note about {topic}. " + " ".join(
                f"Detail {j} on {topic}, remark {t * 10 + k}." for j in range(3 + k)
            )
    return notes


def log_lines(count: int, start: int = 0) -> dict[str, str]:
    """What the writers add meanwhile: far from every topic."""
    return {
        f"log{i:04d}.txt": f"Server log line {i}: process {i * 7} wrote {i * 13} bytes to disk "
        f"sd{chr(97 + i % 5)}, status nominal, checksum {i * 7919 % 65536:x}."
        for i in range(start, start + count)
    }


def env(**extra) -> dict:
    return dict(os.environ, RECALL_DEVICE="cpu", PYTHONUNBUFFERED="1", **extra)


def recall(*args, **extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "recall_cli", *map(str, args)],
        cwd=REPO,
        env=env(**extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()  # e.g. a watcher that was not refused: never left running
        raise
    return process.returncode, stdout, stderr


def refused(args: list, holder: str) -> str:
    """Run a writer that must be refused at once: exit 2, one line naming the holder."""
    started = time.monotonic()
    code, stdout, stderr = finished(recall(*args), 120)
    assert code == 2, (code, stderr)
    assert stdout == "" and len(stderr.strip().splitlines()) == 1, stderr
    assert BUSY.match(stderr.strip()) and f"by recall {holder} (pid" in stderr, stderr
    assert time.monotonic() - started < 60  # refused, not waiting for the holder to finish
    return stderr.strip()


class Reader:
    """Asks each topic in turn, until stopped, and records every answer and the index versions
    before and after it.  `socket`: a `recall query` process answered by the watcher (torch is
    poisoned on its path); else the CLI in this process (reading the index itself when
    RECALL_NO_SERVER is set).  `options`: more query options."""

    def __init__(self, db: Path, root: Path, socket: bool = False, *options: str):
        self.db, self.root, self.socket, self.options = db, root, socket, options
        self.cli = Cli(db)
        self.answers: list[tuple] = []  # (topic, exit, stdout, stderr, version before, after)

    def ask(self, topic: str) -> None:
        before = versions(self.db)
        if self.socket:
            code, stdout, stderr = finished(
                recall(
                    "query",
                    topic,
                    "-n",
                    "3",
                    "--json",
                    *self.options,
                    "--db",
                    self.db,
                    PYTHONPATH=str(self.poison),
                    RECALL_NO_SERVER="",
                ),
                60,
            )
        else:
            result = self.cli("query", topic, "-n", "3", "--json", *self.options)
            code, stdout, stderr = result.exit_code, result.stdout, result.stderr
        self.answers.append((topic, code, stdout, stderr, before, versions(self.db)))

    def run_while(self, busy, least: int = 3, timeout: float = 180) -> None:
        """Ask until `busy()` is false (and at least `least` times)."""
        n, deadline = 0, time.monotonic() + timeout
        while (busy() and time.monotonic() < deadline) or n < least:
            self.ask(TOPICS[n % len(TOPICS)])
            n += 1
            time.sleep(0.05)  # a person or a script asking, not a benchmark: the writer gets the CPU too

    def check(self) -> None:
        """Every answer: exit 0, nothing on stderr, the topic's own notes first."""
        assert self.answers
        for topic, code, stdout, stderr, *_ in self.answers:
            assert code == 0 and stderr == "", (topic, code, stderr)
            results = json.loads(stdout)
            assert results and results[0]["query"] == topic
            top = Path(results[0]["path"])
            assert top.parent == self.root and top.name.startswith(f"n{TOPICS.index(topic)}_"), (topic, results)

    def during_writes(self) -> int:
        """Answers given while the table changed under them."""
        return sum(1 for *_, before, after in self.answers if after != before)


def test_queries_during_index_and_second_writers_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("RECALL_NO_SERVER", "1")
    notes, logs, db = tmp_path / "notes", tmp_path / "logs", tmp_path / "db"
    write_files(notes, topic_notes())
    write_files(logs, log_lines(200))
    assert Cli(db)("index", notes, "--exit-policy", "fixed:3").exit_code == 0  # coarse rows: queries refine

    writer = recall("index", logs, "--db", db, "--json", RECALL_FLUSH_UNITS="8")
    lock = db / "write.lock"
    wait_until(
        lambda: (lock.exists() and "recall index" in lock.read_text()) or writer.poll() is not None,
        60,
        0.01,
        "the index to take the lock",
    )
    second = [recall("index", notes, "--db", db), recall("watch", notes, "--db", db)]  # a second writer
    reader = Reader(db, notes)
    reader.run_while(lambda: writer.poll() is None)
    for process in second:
        code, stdout, stderr = finished(process, 30)
        assert code != 0, "the second writer ran: did the first index end before it started?"
        assert code == 2 and stdout == "" and len(stderr.strip().splitlines()) == 1, (code, stderr)
        assert BUSY.match(stderr.strip()) and f"by recall index (pid {writer.pid})" in stderr, stderr

    code, stdout, stderr = finished(writer)
    assert code == 0, stderr
    assert json.loads(stdout)["added"] == 200  # the first writer was not disturbed
    print(f"index: {len(reader.answers)} answers, {reader.during_writes()} while the table changed")
    reader.check()
    assert reader.during_writes() >= 2, reader.answers
    counts = Checker(db, notes, logs).check()
    assert counts["complete"] == counts["files"] == 200 + len(topic_notes())


def test_a_query_writing_back_makes_writers_wait_not_fail(tmp_path):
    notes, db = tmp_path / "notes", tmp_path / "db"
    write_files(notes, topic_notes(1))
    cli = Cli(db)
    assert cli("index", notes).exit_code == 0
    release = threading.Event()

    def hold(purpose: str, seconds: float) -> None:
        with WriterLock(db, purpose):
            release.set()
            time.sleep(seconds)

    holder = threading.Thread(target=hold, args=("query", 1.0))
    holder.start()
    release.wait(10)
    started = time.monotonic()
    result = cli("index", notes, "--json")
    holder.join()
    assert result.exit_code == 0, result.stderr
    assert time.monotonic() - started >= 0.5  # it waited for the write-back, then ran
    # while a long writer holds it, a query's write-back is skipped, never waits
    with (
        WriterLock(db, "index"),
        pytest.raises(Exception, match="being written by recall index"),
        WriterLock(db, "query"),
    ):
        pass


@pytest.fixture
def poison(tmp_path) -> Path:
    """A `torch` that cannot be imported: a query that gets an answer with it on the path was
    answered through the watcher's socket (the fast path never imports torch)."""
    folder = tmp_path / "poison"
    write_files(folder, {"torch/__init__.py": "raise ImportError('the fast path imported torch')\n"})
    return folder


def test_queries_while_watch_writes_through_the_socket_and_directly(tmp_path, poison):
    root, db = tmp_path / "files", tmp_path / "db"
    write_files(root, topic_notes())
    assert Cli(db)("index", root).exit_code == 0
    log = tmp_path / "watch.log"
    with open(log, "w") as stderr:
        watcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "recall_cli",
                "watch",
                str(root),
                "--db",
                str(db),
                "--delay",
                "0.2",
                "--reconcile",
                "0",
            ],
            cwd=REPO,
            env=env(RECALL_FLUSH_UNITS="8"),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_until(lambda: (db / "query.sock").exists() or watcher.poll() is not None, 120, message="the watcher")
        assert watcher.poll() is None, log.read_text()
        refused(["index", root, "--db", db], "watch")

        incoming = root / "incoming"
        socket_reader, direct_reader = Reader(db, root, socket=True), Reader(db, root)
        socket_reader.poison = poison
        total = len(topic_notes())

        def writing() -> bool:
            return recorded(db) < total + 120

        def land_files() -> None:  # files land in waves while the readers ask
            for wave in range(3):
                write_files(incoming, log_lines(40, wave * 40))
                time.sleep(0.4)

        lander = threading.Thread(target=land_files)
        lander.start()
        threads = [threading.Thread(target=socket_reader.run_while, args=(writing,))]
        threads[0].start()
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("RECALL_NO_SERVER", "1")
            direct_reader.run_while(writing)
        for thread in [lander, *threads]:
            thread.join(120)
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(60) == 0, log.read_text()
    finally:
        if watcher.poll() is None:
            watcher.kill()
    print(
        f"watch: {len(socket_reader.answers)} answers through the socket "
        f"({socket_reader.during_writes()} while the table changed), {len(direct_reader.answers)} direct "
        f"({direct_reader.during_writes()})"
    )
    socket_reader.check()
    direct_reader.check()
    assert socket_reader.during_writes() + direct_reader.during_writes() >= 2
    assert "Traceback" not in log.read_text()
    counts = Checker(db, root).check()
    assert counts["complete"] == counts["files"] == total + 120


def test_queries_while_heal_trains_and_rewrites_rows_beside_an_index(tmp_path, monkeypatch):
    """`recall heal` started while `recall index` writes: training goes on (it only reads); its
    row refresh needs the writer lock, so it runs after the index or is deferred with a warning,
    never both at once.  Queries answer throughout; the deferred refresh runs later, with queries."""
    monkeypatch.setenv("RECALL_NO_SERVER", "1")
    notes, logs, db = tmp_path / "notes", tmp_path / "logs", tmp_path / "db"
    write_files(notes, topic_notes())
    write_files(logs, log_lines(120))
    assert Cli(db)("index", notes, "--exit-policy", "fixed:3").exit_code == 0  # stale once healed

    indexer = recall("index", logs, "--db", db, "--json", RECALL_FLUSH_UNITS="8")
    healer = recall("heal", "--db", db, "--budget", "0.2", "--exits", "1,2", "--json")
    reader = Reader(db, notes, False, "--no-refine")  # refined rows would not be stale any more
    reader.run_while(lambda: indexer.poll() is None or healer.poll() is None)
    code, stdout, stderr = finished(indexer)
    assert code == 0, stderr
    code, stdout, stderr = finished(healer)
    assert code == 0, stderr
    report, refresher = json.loads(stdout), None
    if report["refresh"].get("skipped"):  # the index held the lock when training ended
        assert "being written by recall index" in report["refresh"]["skipped"]
        assert "recall heal --refresh-only" in stderr
        refresher = recall("heal", "--refresh-only", "--db", db, "--json")
        reader.run_while(lambda: refresher.poll() is None)
        code, stdout, stderr = finished(refresher)
        assert code == 0, stderr
        report = json.loads(stdout)
    assert report["refresh"]["refreshed"] > 0
    with WriterLock(db, "index"):  # heal's writing phase, while an index runs: refused, one line
        busy = Cli(db)("heal", "--refresh-only")
    assert busy.exit_code == 2 and BUSY.match(busy.stderr.strip()), busy.stderr
    print(
        f"heal refresh {'deferred' if refresher else 'ran after the index'}: {len(reader.answers)} answers, "
        f"{reader.during_writes()} while the table changed"
    )
    reader.check()
    assert reader.during_writes() >= 2
    counts = Checker(db, notes, logs).check()
    assert counts["complete"] == counts["files"]
