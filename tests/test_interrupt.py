"""`recall index` killed with SIGKILL at random points leaves an index that opens, answers queries and
holds no duplicate or half-written rows; the next run does exactly the work that is missing.

The long test chains kill -9 trials on one corpus of a few hundred files: start `recall index`,
kill it at a point drawn from a seeded RNG (a time during start-up and model load, as the table
is created, right after the run's first or k-th LanceDB commit, or after the last file was
recorded, while it prunes and compacts), check the index (indexcheck.Checker), start again.  The
cycles alternate: one ends with that last kill, the next with a run that completes and whose
`--json` counts must equal the work that was really missing; then the tree changes (edits that
grow or shrink files, renames, deletions, new files) and the next cycle begins.
RECALL_FLUSH_UNITS makes the batches small so that kills land between writes.  Set
RECALL_KILL_SEED to replay another sequence; the seed and every trial are printed on failure.

The second test makes the narrow windows deterministic: the run dies right after one chosen
write (and once while the table is created), for each kind of write."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, write_files
from indexcheck import Checker, recorded, versions

SEED = int(os.environ.get("RECALL_KILL_SEED", "8"))
FILES = 300  # corpus size (one file in six is two chunks long)
KILLS = 20  # kill -9 trials at least
KILLS_PER_CYCLE = (8, 4, 4, 4)  # then a run completes and the tree changes (more cycles if kills missed)
POLICY = ("--exit-policy", "fixed:3")  # coarse rows with an INT4 cache: the usual early-exit rows
FLUSH = "16"
WORDS = [
    "kayak",
    "lake",
    "sunset",
    "bread",
    "flour",
    "oven",
    "train",
    "station",
    "ticket",
    "garden",
    "tomato",
    "compost",
    "piano",
    "chord",
    "jazz",
    "marathon",
    "runner",
    "shoe",
    "bicycle",
    "chain",
    "gear",
    "wool",
    "sweater",
    "needle",
    "telescope",
    "planet",
    "orbit",
    "receipt",
    "tax",
    "invoice",
    "python",
    "list",
    "loop",
    "river",
    "bridge",
    "mountain",
    "trail",
    "cabin",
    "winter",
    "snow",
    "harbor",
    "boat",
    "anchor",
    "market",
    "cheese",
    "olive",
    "lemon",
    "violin",
    "concert",
    "museum",
    "painting",
    "candle",
    "forest",
    "owl",
]


def note(number: int, version: str, long: bool) -> str:
    rng = random.Random(f"{number}/{version}")
    body = " ".join(rng.choice(WORDS) for _ in range(280 if long else 30))  # two chunks, or one
    return f"Note {number} ({version}) about topic {number}. {body}\n"


# --- the long test: many kills at random points ------------------------------------------------


class Corpus:
    """Notes (one in six three chunks long) and a file recall does not embed; `change()` edits,
    renames, deletes and adds.  Sizes scale with `files`."""

    def __init__(self, root: Path, rng: random.Random, files: int = FILES):
        self.root, self.rng, self.next_number, self.version = root, rng, files, 0
        self.scale = files / FILES
        write_files(root, {f"notes/n{i:03d}.md": note(i, "v0", i % 6 == 0) for i in range(files)})
        write_files(root, {"blobs/data0.bin": bytes(range(256)) * 8})  # not embeddable: skipped

    def change(self) -> dict[str, int]:
        """Edits (long files shrink to one chunk, short ones grow to two or get new words),
        renames across directories, deletions, new notes and a new non-embeddable file."""
        self.version += 1

        def count(n):
            return max(1, round(n * self.scale))

        notes = sorted(self.root.rglob("*.md"))
        self.rng.shuffle(notes)
        long = [path for path in notes if path.stat().st_size >= 1000]
        short = [path for path in notes if path not in long]
        grow = short[: count(10)]
        edit = long[: count(15)] + short[: count(30)]
        rest = [path for path in notes if path not in edit]
        rename, delete = rest[: count(15)], rest[count(15) : count(15) + count(10)]
        for path in edit:
            number = int(path.stem.lstrip("nm"))
            path.write_text(note(number, f"v{self.version}", path in grow))
        for path in rename:
            target = self.root / f"moved{self.version}" / ("m" + path.stem.lstrip("nm") + ".md")
            target.parent.mkdir(exist_ok=True)
            os.rename(path, target)
        for path in delete:
            path.unlink()
        new = {
            f"notes/n{self.next_number + i:03d}.md": note(self.next_number + i, "v0", i % 6 == 0)
            for i in range(count(30))
        }
        self.next_number += count(30)
        new[f"blobs/data{self.version}.bin"] = bytes(range(256))[::-1] * (8 + self.version)
        write_files(self.root, new)
        return {"edited": len(edit), "renamed": len(rename), "deleted": len(delete), "new": len(new)}


def start_index(root: Path, db: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, RECALL_DEVICE="cpu", RECALL_FLUSH_UNITS=FLUSH)
    return subprocess.Popen(
        [sys.executable, "-m", "recall_cli", "index", str(root), "--db", str(db), "--json", *POLICY, *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def kill_at(process: subprocess.Popen, db: Path, trigger: tuple, timeout: float = 120) -> dict:
    """Wait for the trigger, then kill -9; returns what happened (None 'killed_at' if it ended)."""
    kind, value, delay = trigger
    started, v0, fired = time.monotonic(), versions(db), None
    deadline = started + timeout
    while process.poll() is None and time.monotonic() < deadline:
        now = time.monotonic()
        if fired is None and (
            (kind == "time" and now - started >= value)
            or (kind == "table" and (db / "units.lance").exists())
            or (kind == "commit" and versions(db) - v0 >= value)
            or (kind == "end" and recorded(db) >= value)
        ):
            fired = now
        if fired is not None and now - fired >= delay:
            at = time.monotonic() - started
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return {"killed_at": round(at, 3), "commits": versions(db) - v0}
        time.sleep(0.003)
    assert process.poll() is not None, f"index still running after {timeout} s"
    return {"killed_at": None, "commits": versions(db) - v0}


def cycle_plan(rng: random.Random, fresh: bool, kills: int, end: bool) -> list[tuple]:
    """The kill points of one cycle, in random order: during start-up/model load (a time), right
    after the run's first LanceDB commit, after its k-th commit, and once the last file is
    recorded (pruning, compaction, cache budget).  A fresh index is first killed as its table is
    created.  Each point has a small random extra delay, so kills land anywhere between writes."""
    kinds = ["time", "first"] + ["commit", "time", "commit", "commit", "first"][: max(0, kills - 2 - fresh - end)]
    rng.shuffle(kinds)
    kinds = ["table"] * fresh + kinds + ["end"] * end  # a kill at the end leaves nothing for later ones
    plan = []
    for kind in kinds:
        if kind == "time":
            plan.append(("time", round(rng.uniform(0.05, 1.8), 3), 0.0))
        elif kind == "table":
            plan.append(("table", 0, round(rng.uniform(0.0, 0.1), 3)))
        elif kind == "first":
            plan.append(("commit", 1, round(rng.uniform(0.0, 0.05), 3)))
        elif kind == "commit":
            plan.append(("commit", rng.randint(2, 5), round(rng.uniform(0.0, 0.06), 3)))
        else:
            plan.append(("end", None, round(rng.uniform(0.0, 0.25), 3)))
    return plan


def phase(trigger: tuple, outcome: dict) -> str:
    """Where the kill landed, by the kill point (and whether anything was committed yet)."""
    if outcome["killed_at"] is None:
        return "completed"
    kind = trigger[0]
    if kind == "time":
        return "startup/model load" if outcome["commits"] == 0 else "early writes"
    if kind == "table":
        return "table creation"
    if kind == "commit":
        return "first write" if trigger[1] == 1 else "mid-run writes"
    return "end (all recorded)"


def test_kill_9_at_random_points_never_corrupts_and_the_next_run_does_only_the_missing_work(tmp_path):
    rng = random.Random(SEED)
    root, db = tmp_path / "files", tmp_path / "db"
    corpus = Corpus(root, rng)
    checker = Checker(db, root)
    log: list[str] = []
    kills: list[str] = []

    def report() -> str:
        return f"RECALL_KILL_SEED={SEED}\n" + "\n".join(log)

    try:
        for cycle in range(len(KILLS_PER_CYCLE) + 4):
            if cycle >= len(KILLS_PER_CYCLE) and len(kills) >= KILLS:
                break
            planned = KILLS_PER_CYCLE[cycle] if cycle < len(KILLS_PER_CYCLE) else 4
            if cycle:
                log.append(f"changed the tree: {corpus.change()}")
            # even cycles end with a kill after the last file is recorded, odd ones with a run
            # that completes work that kills left
            plan = cycle_plan(rng, not (db / "units.lance").exists(), planned, end=cycle % 2 == 0)
            while True:
                before = checker.snapshot()
                missing = len(before["disk"]) - len(before["complete"])
                gone = sum(1 for path in before["manifest"] if path not in before["disk"])
                if not missing:  # an earlier run got to the end before its kill point
                    plan.clear()
                trigger = plan.pop(0) if plan else ("none",)
                if trigger[0] == "end":  # every file recorded (gone ones are pruned after that)
                    trigger = ("end", len(before["disk"]) + gone, trigger[2])
                process = start_index(root, db)
                outcome = kill_at(process, db, trigger) if trigger[0] != "none" else {"killed_at": None, "commits": 0}
                stdout, stderr = process.communicate(timeout=300)
                what = phase(trigger, outcome)
                counts = checker.check(before)
                log.append(
                    f"cycle {cycle} trigger={trigger} -> {what} at {outcome['killed_at']} s "
                    f"(commits {outcome['commits']}, missing before {missing}) {counts}"
                )
                if outcome["killed_at"] is not None:
                    kills.append(what)
                    continue
                # a run that completes does exactly the work that was missing, and leaves the index
                # equal to a fresh one (check(): every file on disk complete, nothing else)
                assert process.returncode == 0, stderr.decode()
                summary = json.loads(stdout)
                expected = checker.expected_summary(before)
                got = {key: summary[key] for key in expected}
                assert got == expected, f"a run after kills did other work than was missing: {got} != {expected}"
                assert counts["complete"] == counts["files"]
                if not plan:
                    break
    except AssertionError as error:
        raise AssertionError(f"{error}\n{report()}") from None
    phases = {name: kills.count(name) for name in sorted(set(kills))}
    log.append(f"{len(kills)} kills: {phases}")
    print(report())
    assert len(kills) >= KILLS, report()
    for needed in ("startup/model load", "first write", "mid-run writes", "end (all recorded)"):
        assert phases.get(needed), f"no kill landed in {needed}: {phases}\n{report()}"


# --- crashes at exact points: the narrow windows between two writes ------------------------------


def _flush_upsert(args, kwargs) -> bool:
    rows = args[1] if len(args) > 1 else kwargs["rows"]
    return len({row["path"] for row in rows}) > 1  # a batch of encoded files, not a moved file's copy


def _ok_records(args, kwargs) -> bool:
    return any(record.status == "ok" for record in args[1])


CRASH_POINTS = [  # (class, method, which call: a predicate on its arguments)
    ("store", "Store.upsert", _flush_upsert),  # new rows committed; older rows of the same files?
    ("store", "Store.upsert", lambda args, kwargs: not _flush_upsert(args, kwargs)),  # a move's copy
    ("manifest", "Manifest.upsert", _ok_records),  # file records written; their exit records?
    ("store", "Store.delete_paths", lambda args, kwargs: True),  # pruning: rows gone, records not yet
    ("store", "Store.maintain", lambda args, kwargs: True),
]


def test_a_crash_right_after_any_single_write_leaves_a_consistent_index(tmp_path, monkeypatch):
    """Each kind of write of an index run, in turn, is the last one before the process dies (a
    BaseException raised right after it returns: finally blocks roll back open transactions
    just as a kill would), and first the creation of the table itself.  After each: the same
    checks as after a kill -9, then a run that completes does exactly the missing work."""
    from recall_cli.index.indexer import index_roots
    from recall_cli.index.options import IndexOptions
    from recall_cli.storage import manifest as manifest_module
    from recall_cli.storage import table as store_module

    rng = random.Random(SEED)
    root, db = tmp_path / "files", tmp_path / "db"
    corpus = Corpus(root, rng, files=30)
    checker = Checker(db, root)
    options = IndexOptions(exit_policy="fixed:3")
    modules = {"store": store_module, "manifest": manifest_module}

    class Crash(BaseException):
        pass

    # killed while LanceDB creates the table: its directory, but no committed version
    def create_then_die(self, name, *args, **kwargs):
        real_create(self, name, *args, **kwargs)
        for version in (db / "units.lance" / "_versions").iterdir():
            version.unlink()
        raise Crash("create_table")

    import lancedb.db

    connection = type(lancedb.connect(str(tmp_path / "probe")))
    real_create = connection.create_table
    before = checker.snapshot()
    with monkeypatch.context() as patch:
        patch.setattr(connection, "create_table", create_then_die)
        with pytest.raises(Crash):
            index_roots([str(root)], db, options)
    assert (db / "units.lance").exists()
    checker.check(before)
    before = checker.snapshot()
    summary = index_roots([str(root)], db, options).as_dict()
    expected = checker.expected_summary(before)
    assert {key: summary[key] for key in expected} == expected

    for module, name, which in CRASH_POINTS:
        corpus.change()
        before = checker.snapshot()
        owner_name, method = name.split(".")
        owner = getattr(modules[module], owner_name)
        original = getattr(owner, method)

        def crashing(*args, _original=original, _which=which, _name=name, **kwargs):
            result = _original(*args, **kwargs)
            if _which(args, kwargs):
                raise Crash(_name)
            return result

        with monkeypatch.context() as patch:
            patch.setattr(owner, method, crashing)
            with pytest.raises(Crash):
                index_roots([str(root)], db, options)
        checker.check(before)  # what a kill right there leaves
        before = checker.snapshot()
        summary = index_roots([str(root)], db, options).as_dict()
        expected = checker.expected_summary(before)
        assert {key: summary[key] for key in expected} == expected, name
        counts = checker.check(before)
        assert counts["complete"] == counts["files"], name
