"""Helpers for the watch and server tests: run a real watcher, wait for it, compare indexes."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import lancedb

from recall_cli.cli.commands import app
from recall_cli.index.hashing import file_hash
from recall_cli.index.scan import scan_roots
from recall_cli.paths import real_path
from recall_cli.watch.watcher import Watcher, WatchOptions


def wait_until(condition, timeout: float = 60.0, interval: float = 0.05, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


def manifest_state(db: Path) -> dict[str, tuple]:
    """path -> (hash, status, units) from the manifest."""
    conn = sqlite3.connect(db / "manifest.sqlite")
    try:
        return {
            real_path(path): (content_hash, status, units)
            for path, content_hash, status, units in conn.execute("SELECT path, hash, status, units FROM files")
        }
    finally:
        conn.close()


def lance_rows(db: Path) -> list[tuple]:
    """Sorted (path, hash, chunk) of every row; asserts no duplicate ids."""
    if not (db / "units.lance").exists():
        return []
    rows = lancedb.connect(str(db)).open_table("units").to_arrow().select(["id", "path", "hash", "chunk"]).to_pylist()
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)), "duplicate rows"
    return sorted((real_path(row["path"]), row["hash"], row["chunk"]) for row in rows)


def tree_hashes(root: Path) -> dict[str, str]:
    """What a converged index must record: path -> content hash of every file a scan finds."""
    hashes = {}
    for entry in scan_roots([str(root)]).files:
        try:
            hashes[entry.path] = file_hash(entry.path)
        except OSError:
            pass
    return hashes


def fresh_index(root: Path, db: Path) -> tuple[dict, list]:
    """A from-scratch `recall index` of the same tree: (manifest state, lance rows)."""
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["index", str(root), "--db", str(db), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return manifest_state(db), lance_rows(db)


def converged(root: Path, db: Path, watcher: ThreadWatcher | None = None) -> bool:
    if watcher is not None and (watcher.watcher.pending or not watcher.watcher.events.empty()):
        return False
    if not (db / "manifest.sqlite").exists():
        return False
    recorded = {path: state[0] for path, state in manifest_state(db).items()}
    return recorded == tree_hashes(root)


def assert_same_as_fresh(root: Path, db: Path, fresh_db: Path) -> None:
    """The watched index equals a fresh index of the same tree: paths, hashes, statuses, units,
    and the LanceDB rows (path, hash, chunk), with no duplicates."""
    import shutil

    shutil.rmtree(fresh_db, ignore_errors=True)
    expected_manifest, expected_rows = fresh_index(root, fresh_db)
    assert manifest_state(db) == expected_manifest
    assert lance_rows(db) == expected_rows


class ThreadWatcher:
    """A real Watcher (real watchdog/inotify) on a thread of the test process (the model stays
    loaded between tests)."""

    def __init__(self, root: Path, db: Path, **options):
        options.setdefault("delay", 0.2)
        options.setdefault("reconcile", 0.0)
        options.setdefault("serve", False)
        self.watcher = Watcher([str(root)], db, WatchOptions(**options), stream=_Log())
        self.result: list = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.result.append(self.watcher.run())
        except BaseException as error:  # reported by the test
            self.result.append(error)
            self.watcher.ready.set()

    @property
    def log(self) -> str:
        return self.watcher.stream.text()

    def __enter__(self) -> ThreadWatcher:
        self.thread.start()
        assert self.watcher.ready.wait(120), "watcher did not start"
        if self.result and isinstance(self.result[0], BaseException):
            raise self.result[0]
        return self

    def __exit__(self, *exc) -> None:
        self.watcher.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "watcher did not stop"


class _Log:
    def __init__(self):
        self.lines: list[str] = []
        self.lock = threading.Lock()

    def write(self, text: str) -> None:
        with self.lock:
            self.lines.append(text)

    def flush(self) -> None:
        pass

    def text(self) -> str:
        with self.lock:
            return "".join(self.lines)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def env_for_subprocess() -> dict:
    return dict(os.environ, RECALL_DEVICE="cpu", PYTHONUNBUFFERED="1")
