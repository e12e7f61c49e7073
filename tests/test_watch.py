"""`recall watch` with real watchdog on real temporary directories: after every kind of change the
watched index equals a fresh index of the same tree (paths, hashes, statuses, units, rows)."""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, run_recall, write_files
from watchutil import (
    ThreadWatcher,
    assert_same_as_fresh,
    converged,
    env_for_subprocess,
    lance_rows,
    manifest_state,
    tree_hashes,
    wait_until,
    write_text,
)

NOTES = {
    "notes/kayak.md": "Paddling the red kayak across the lake at sunset.",
    "notes/recipe.txt": "Grandma's apple pie: flour, butter, apples, cinnamon.",
    "trips/train.txt": "Train timetable from Berlin to Munich.",
    "data.bin": bytes(range(256)) * 4,
}


@pytest.fixture
def root(tmp_path):
    folder = tmp_path / "files"
    write_files(folder, NOTES)
    return folder


def settle(root, db, watcher, fresh_db, timeout=60):
    wait_until(lambda: converged(root, db, watcher), timeout, message="the index to converge")
    assert_same_as_fresh(root, db, fresh_db)


def test_odd_file_names_are_followed(root, tmp_path):
    """Names with bytes that are not UTF-8, or a newline, go through events, moves and deletes."""
    db, fresh = tmp_path / "db", tmp_path / "fresh"
    latin, other = os.fsencode(root) + b"/caf\xe9 notes.md", os.fsencode(root) + b"/renamed \xff.md"
    with ThreadWatcher(root, db) as watched:
        settle(root, db, watched, fresh)
        with open(latin, "wb") as handle:
            handle.write(b"A note about lighthouses whose name is latin-1.")
        write_text(root / "two\nlines.md", "A note about harbours whose name holds a newline.")
        settle(root, db, watched, fresh)

        moved_before = watched.watcher.totals["moved"]
        os.rename(latin, other)
        settle(root, db, watched, fresh)
        assert watched.watcher.totals["moved"] == moved_before + 1  # kept its embedding

        os.unlink(other)
        settle(root, db, watched, fresh)
    assert watched.result == [0]


def test_create_modify_rename_move_delete_file(root, tmp_path):
    db, fresh = tmp_path / "db", tmp_path / "fresh"
    with ThreadWatcher(root, db) as watched:
        settle(root, db, watched, fresh)  # caught up
        assert "caught up: 3 added" in watched.log

        write_text(root / "notes/new.md", "A brand new note about mountain hiking.")  # create
        settle(root, db, watched, fresh)

        write_text(root / "notes/new.md", "The note now talks about sailing instead.")  # modify
        settle(root, db, watched, fresh)

        moved_before = watched.watcher.totals["moved"]
        os.rename(root / "notes/new.md", root / "notes/renamed.md")  # rename: no re-encode
        settle(root, db, watched, fresh)
        assert watched.watcher.totals["moved"] == moved_before + 1

        (root / "archive").mkdir()
        shutil.move(root / "notes/kayak.md", root / "archive/kayak.md")  # across directories
        settle(root, db, watched, fresh)
        assert watched.watcher.totals["moved"] == moved_before + 2

        (root / "notes/recipe.txt").unlink()  # delete
        settle(root, db, watched, fresh)
    assert watched.result == [0]
    assert "stopped cleanly" in watched.log
    assert "batch (" in watched.log and "added" in watched.log


def test_move_and_delete_whole_directories(root, tmp_path):
    db, fresh = tmp_path / "db", tmp_path / "fresh"
    for index in range(12):
        write_text(root / f"deep/a/b/note{index}.txt", f"note number {index} about topic {index * 7}")
    with ThreadWatcher(root, db) as watched:
        settle(root, db, watched, fresh)
        updated = watched.watcher.totals["added"] + watched.watcher.totals["updated"]
        shutil.move(root / "deep", root / "trips/deeper")  # a whole directory: paths follow
        settle(root, db, watched, fresh)
        assert watched.watcher.totals["added"] + watched.watcher.totals["updated"] == updated  # no re-encode
        assert watched.watcher.totals["moved"] >= 12

        shutil.rmtree(root / "trips")  # a whole directory goes
        settle(root, db, watched, fresh)
        assert not any("/trips/" in path for path in manifest_state(db))


def test_ignore_rules_apply_to_events(root, tmp_path):
    db, fresh = tmp_path / "db", tmp_path / "fresh"
    with ThreadWatcher(root, db) as watched:
        settle(root, db, watched, fresh)
        write_text(root / ".hidden.md", "hidden")
        write_text(root / "node_modules/pkg/readme.md", "dependency docs")
        write_text(root / ".gitignore", "drafts/\n")
        write_text(root / "drafts/secret.md", "a private draft")
        write_text(root / "visible.md", "a visible note")
        settle(root, db, watched, fresh)
        paths = set(manifest_state(db))
        assert str(root / "visible.md") in paths
        assert not any(part in path for path in paths for part in (".hidden", "node_modules", "drafts"))

        os.rename(root / "visible.md", root / ".now-hidden.md")  # renamed to an ignored name: leaves
        (root / ".gitignore").write_text("")  # drafts/ no longer ignored: comes in
        settle(root, db, watched, fresh)
        assert str(root / "drafts/secret.md") in manifest_state(db)


def test_burst_of_1000_mixed_events(root, tmp_path):
    db, fresh = tmp_path / "db", tmp_path / "fresh"
    rng = random.Random(7)
    with ThreadWatcher(root, db) as watched:
        settle(root, db, watched, fresh)
        live: list = []
        for step in range(1000):
            action = rng.random()
            if action < 0.45 or len(live) < 10:
                path = root / f"burst/d{step % 7}/f{step}.txt"
                write_text(path, f"burst file {step} about subject {rng.randrange(50)}")
                live.append(path)
            elif action < 0.65:
                path = rng.choice(live)
                path.write_text(f"modified {step} " * rng.randrange(1, 4))
            elif action < 0.85:
                path = live.pop(rng.randrange(len(live)))
                target = root / f"burst/d{rng.randrange(7)}/m{step}.txt"
                target.parent.mkdir(parents=True, exist_ok=True)
                os.rename(path, target)
                live.append(target)
            else:
                live.pop(rng.randrange(len(live))).unlink()
        settle(root, db, watched, fresh, timeout=150)
        assert len(tree_hashes(root)) == len(live) + len(NOTES)


def test_file_written_slowly_in_chunks_is_indexed_once(root, tmp_path):
    db, fresh = tmp_path / "db", tmp_path / "fresh"
    with ThreadWatcher(root, db, delay=0.6) as watched:
        settle(root, db, watched, fresh)
        before = dict(watched.watcher.totals)
        path = root / "slow.txt"
        with open(path, "w") as handle:
            for chunk in range(8):
                handle.write(f"chunk {chunk} of a note that is being copied slowly. ")
                handle.flush()
                time.sleep(0.2)
        settle(root, db, watched, fresh)
        assert watched.watcher.totals["added"] == before["added"] + 1
        assert watched.watcher.totals["updated"] == before["updated"]  # encoded once, complete


def test_missing_root_is_never_everything_deleted(root, tmp_path):
    db = tmp_path / "db"
    with ThreadWatcher(root, db, reconcile=0.5) as watched:
        wait_until(lambda: converged(root, db, watched), 60)
        rows = lance_rows(db)
        os.rename(root, tmp_path / "unplugged")  # the root vanishes (an unmounted drive)
        wait_until(lambda: "missing or unmounted" in watched.log, 10)
        time.sleep(1.5)  # reconciliation passes and events ran meanwhile
        assert lance_rows(db) == rows and len(manifest_state(db)) == 4
        os.rename(tmp_path / "unplugged", root)  # back: watched and reconciled again
        wait_until(lambda: "is back" in watched.log, 10)
        write_text(root / "after.md", "written after the drive came back")
        wait_until(lambda: converged(root, db, watched), 60)


def test_one_watcher_per_index(root, tmp_path, cli):
    db = tmp_path / "db"
    assert cli.db == db
    with ThreadWatcher(root, db):
        for args in (("watch", root), ("index", root)):
            result = cli(*args)
            assert result.exit_code == 2
            assert "is being written by recall watch (pid" in result.stderr


def test_out_of_inotify_watches_prints_fix_and_polls(root, tmp_path, monkeypatch):
    from watchdog.observers import Observer  # inotify here; polling is another class

    def no_watches(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(Observer, "schedule", no_watches)
    db, fresh = tmp_path / "db", tmp_path / "fresh"
    with ThreadWatcher(root, db, poll_interval=0.2) as watched:
        assert "fs.inotify.max_user_watches" in watched.log and "sudo sysctl" in watched.log
        assert watched.watcher.status()["polling"] == [str(root.resolve())]
        write_text(root / "polled.md", "seen by polling")
        settle(root, db, watched, fresh)


def _start_watch(root, db, log):
    with open(log, "wb") as handle:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "recall_cli", "watch", str(root), "--db", str(db), "--delay", "0.3", "--no-serve"],
            stdout=subprocess.DEVNULL,
            stderr=handle,
            cwd=REPO,
            env=env_for_subprocess(),
        )
    wait_until(
        lambda: b"watching 1 root" in log.read_bytes() or process.poll() is not None,
        120,
        message="the watcher to start",
    )
    assert process.poll() is None, log.read_text()
    return process


def test_kill_9_in_a_burst_then_restart_converges_without_duplicates(root, tmp_path):
    db, fresh = tmp_path / "db", tmp_path / "fresh"
    process = _start_watch(root, db, tmp_path / "watch1.log")
    for step in range(300):
        write_text(root / f"burst/f{step}.txt", f"burst file {step}, a note about item {step * 13}")
    wait_until(lambda: b"batch (" in (tmp_path / "watch1.log").read_bytes(), 60, 0.01, message="a first batch")
    for step in range(300, 400):  # more events while it applies
        write_text(root / f"burst/g{step}.txt", f"second wave {step}")
    process.kill()  # kill -9 in the middle
    process.wait(10)
    for step in range(0, 300, 3):
        os.rename(root / f"burst/f{step}.txt", root / f"burst/r{step}.txt")  # changes while it is down

    process = _start_watch(root, db, tmp_path / "watch2.log")
    try:
        wait_until(lambda: converged(root, db), 120, message="convergence after restart")
        process.send_signal(signal.SIGTERM)  # finishes its batch, exits cleanly
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert b"stopped cleanly" in (tmp_path / "watch2.log").read_bytes()
    assert not (db / "query.sock").exists()
    assert_same_as_fresh(root, db, fresh)


def test_delay_pattern_option_is_checked(root, tmp_path):
    done = run_recall("watch", root, "--db", tmp_path / "db", "--delay-pattern", "*.log")
    assert done.returncode == 2 and "GLOB=SECONDS" in done.stderr
