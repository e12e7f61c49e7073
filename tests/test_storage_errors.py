"""A full disk, a file size limit, a read-only index or file system: one clear line on stderr
(what happened, what to do; exit 2, no traceback), and nothing half-written: the index still
opens and answers, holds no duplicate or partial rows, and a rerun with room completes it.

The disk really fills: the index lives on a small tmpfs when this machine lets us mount one (real
ENOSPC), and always also under RLIMIT_FSIZE with SIGXFSZ ignored (writes past the limit fail with
EFBIG, as on a full disk), so machines that cannot mount still run a real test.  Tests run as
root, which permission bits do not bind; recall runs in a child without CAP_DAC_OVERRIDE /
CAP_DAC_READ_SEARCH (still uid 0, so it can use the venv wherever it lives), or, where capabilities
cannot be dropped, as the unprivileged user nobody.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import stat
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

import lancedb
import pytest
from conftest import REPO, assert_clear_error
from restricted import binds, recall

WORDS = [
    "kayak",
    "lake",
    "sunset",
    "apple",
    "pie",
    "butter",
    "train",
    "berlin",
    "munich",
    "tax",
    "insurance",
    "garden",
    "tomato",
    "violin",
    "concert",
    "mountain",
    "boots",
    "river",
    "bridge",
    "castle",
    "winter",
    "coffee",
    "beans",
    "bicycle",
    "repair",
    "harbour",
    "lighthouse",
    "museum",
    "painting",
    "recipe",
    "soup",
    "candle",
    "library",
    "novel",
    "chess",
    "rocket",
    "comet",
    "island",
    "volcano",
    "forest",
    "owl",
    "lantern",
    "piano",
    "theatre",
    "market",
    "bakery",
    "bread",
    "cheese",
    "orchard",
    "meadow",
    "glacier",
    "canyon",
    "desert",
    "camel",
]


def note_text(number: int) -> str:
    rng = random.Random(number)
    return f"Note {number}: " + " ".join(rng.choice(WORDS) for _ in range(40)) + "."


def write_notes(root: Path, start: int, count: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for number in range(start, start + count):
        (root / f"n{number:03d}.txt").write_text(note_text(number))


def index_state(db: Path) -> dict[str, int]:
    """Check the index holds no duplicate or partial rows and that every file the manifest lists
    as embedded has all its rows; return {path: units} of those files."""
    rows = lancedb.connect(str(db)).open_table("units").to_arrow().select(["id", "path", "chunk"]).to_pylist()
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)), "duplicate rows"
    chunks: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        chunks[row["path"]].append(row["chunk"])
    for path, numbers in chunks.items():
        assert sorted(numbers) == list(range(len(numbers))), f"partial rows of {path}"
    conn = sqlite3.connect(f"file:{db / 'manifest.sqlite'}?mode=ro", uri=True)
    try:
        listed = dict(conn.execute("SELECT path, units FROM files WHERE status = 'ok'"))
    finally:
        conn.close()
    for path, units in listed.items():
        assert len(chunks.get(path, [])) == units, f"{path}: manifest says {units} rows"
    # rows of files the manifest does not list yet (it is written second) are complete (checked
    # above) and are taken over by the next run
    return listed


def top_hit(result) -> str:
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.splitlines()[0]).name


# --- a full disk ------------------------------------------------------------------------------


def mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
        ).returncode
        == 0
    )


def leave_free(mount: Path, free: int) -> None:
    """Fill the file system at `mount` until `free` bytes are left."""
    info = os.statvfs(mount)
    with open(mount / "filler", "wb") as handle:
        handle.write(b"\0" * max(0, info.f_bavail * info.f_frsize - free))


def unmount(where: Path) -> None:
    if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)  # busy: detach now


# (how the disk fills, bytes of room left or file size limit).  Each stops a different write of
# the second run (measured): tmpfs-200k: the manifest (SQLITE_FULL), after the vector table took
# the first batch; fsize-64k: the vector table's first data file (Lance: "File too large (os error
# 27)"; a real ENOSPC there reads "(os error 28)"); fsize-200k: the manifest, for which SQLite keeps
# no errno ("disk I/O error"), after the vector table took every batch.
FULL = [("tmpfs", 200 << 10), ("fsize", 64 << 10), ("fsize", 200 << 10)]


@pytest.mark.parametrize("how, room", FULL, ids=[f"{how}-{room >> 10}k" for how, room in FULL])
def test_disk_full_mid_index_is_one_clear_line_and_nothing_half_written(tmp_path, how, room):
    files = tmp_path / "files"
    write_notes(files, 0, 20)
    limit = None
    if how == "tmpfs":
        disk = tmp_path / "disk"
        if not mount_tmpfs(disk, "8m"):
            pytest.skip("cannot mount a tmpfs here (the fsize cases cover a full disk)")
        db = disk / "db"
    else:
        db = tmp_path / "db"
    try:
        # coarse rows with caches: queries refine, and try to write the fine vectors back
        first = recall("index", files, "--db", db, "--exit-policy", "fixed:3")
        assert first.returncode == 0, first.stderr
        write_notes(files, 20, 180)
        if how == "tmpfs":
            leave_free(disk, room)
        else:
            limit = ("fsize", room)

        failed = recall("index", files, "--db", db, under=limit)
        if how == "tmpfs":
            assert_clear_error(
                failed,
                f"no space left on device writing the index at {db}",
                "free some space",
                "--db",
                "what was already indexed is intact",
            )
        else:
            assert_clear_error(
                failed,
                f"file size limit reached writing the index at {db}",
                "ulimit -f",
                "what was already indexed is intact",
            )

        # still full: the index opens and answers (a refinement it cannot save is one note)
        found = recall("query", note_text(3), "--db", db, "-l", under=limit)
        assert top_hit(found) == "n003.txt"
        assert "Traceback" not in found.stderr and len(found.stderr.strip().splitlines()) <= 1, found.stderr
        stats = recall("stats", "--db", db, "--json", under=limit)
        assert stats.returncode == 0, stats.stderr
        state = index_state(db)
        assert {f"n{number:03d}.txt" for number in range(20)} <= {Path(path).name for path in state}

        # room again: a rerun completes the index
        if how == "tmpfs":
            (disk / "filler").unlink()
        done = recall("index", files, "--db", db, "--json")
        assert done.returncode == 0, done.stderr
        state = index_state(db)
        assert sorted(Path(path).name for path in state) == [f"n{number:03d}.txt" for number in range(200)]
        assert lancedb.connect(str(db)).open_table("units").count_rows() == sum(state.values())
    finally:
        if how == "tmpfs":
            unmount(disk)


# --- read-only: permission bits, and a read-only file system -----------------------------------


class AsUser:
    """Runs recall so that permission bits bind it; `base` is a folder it can write."""

    def __init__(self, base: Path, under=None, env=None):
        self.base, self.under, self.env = base, under, env or {}

    def __call__(self, *args) -> subprocess.CompletedProcess:
        return recall(*args, under=self.under, env=self.env)


@pytest.fixture
def as_user(tmp_path):
    if os.geteuid() != 0:
        yield AsUser(tmp_path)  # permission bits already bind us
        return
    works, why = binds(("nodac", 0), tmp_path)
    if works:
        yield AsUser(tmp_path, ("nodac", 0))
        return
    base = Path(tempfile.mkdtemp(prefix="recall-nobody-"))
    try:
        base.chmod(0o777)
        env = {"HOME": str(base)}
        works, why_nobody = binds(("nobody", 0), base, env)
        if not works:
            pytest.skip(
                f"cannot run recall bound by permissions: dropping capabilities: {why}; "
                f"as nobody (python or {REPO} not readable by it?): {why_nobody}"
            )
        yield AsUser(base, ("nobody", 0), env)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def snapshot(db: Path) -> dict:
    """Every file and folder under the index with its size, mtime and mode."""
    found = {}
    for folder, dirs, names in os.walk(db):
        for name in dirs + names:
            info = os.lstat(os.path.join(folder, name))
            found[os.path.relpath(os.path.join(folder, name), db)] = (info.st_size, info.st_mtime_ns, info.st_mode)
    return found


def test_read_only_index_answers_queries_and_refuses_changes_clearly(as_user):
    files, db = as_user.base / "files", as_user.base / "db"
    write_notes(files, 0, 12)
    first = as_user("index", files, "--db", db, "--exit-policy", "fixed:3")  # coarse rows: queries refine
    assert first.returncode == 0, first.stderr
    db.chmod(0o500)  # the owner made it read-only (its subfolders stay writable)
    try:
        before = snapshot(db)
        found = as_user("query", note_text(3), "--db", db, "-l", "-v")
        assert top_hit(found) == "n003.txt"
        assert "not written back" in found.stderr and "Traceback" not in found.stderr, found.stderr
        stats = as_user("stats", "--db", db, "--json")
        assert stats.returncode == 0 and json.loads(stats.stdout)["files"] == 12, stats.stderr

        write_notes(files, 12, 1)
        refused = as_user("index", files, "--db", db)
        assert_clear_error(refused, f"no permission to write the index at {db}", "queries still work", "--db elsewhere")
        assert snapshot(db) == before  # nothing written: no lock file, no WAL, no refined rows
        assert stat.S_IMODE(db.stat().st_mode) == 0o500  # and it was not made writable again
    finally:
        db.chmod(0o700)
    done = as_user("index", files, "--db", db, "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["added"] == 1, done.stderr


def test_new_index_where_the_parent_is_not_writable(as_user):
    files, parent = as_user.base / "files", as_user.base / "locked"
    write_notes(files, 0, 2)
    parent.mkdir(mode=0o555)
    try:
        refused = as_user("index", files, "--db", parent / "recall" / "db")
        assert_clear_error(
            refused, f"cannot create the index at {parent / 'recall' / 'db'}", "permission denied", "--db"
        )
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o700)


def test_index_on_a_read_only_file_system(tmp_path):
    files, disk = tmp_path / "files", tmp_path / "disk"
    write_notes(files, 0, 6)
    if not mount_tmpfs(disk, "8m"):
        pytest.skip("cannot mount a tmpfs here")
    db = disk / "db"
    try:
        assert recall("index", files, "--db", db).returncode == 0
        assert subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True).returncode == 0
        write_notes(files, 6, 1)
        assert_clear_error(
            recall("index", files, "--db", db), f"the index at {db} is on a read-only file system", "queries still work"
        )
        assert top_hit(recall("query", note_text(2), "--db", db, "-l")) == "n002.txt"
        assert recall("stats", "--db", db).returncode == 0
    finally:
        unmount(disk)
