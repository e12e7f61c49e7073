"""The parts of `recall watch`, each alone: the debouncer and the idle scheduler with a fake clock (no
sleeps, no index), and the observers with real watchdog on temporary directories (no index)."""

from __future__ import annotations

import errno
import os
import queue
import threading

import pytest
from watchdog import events as fs_events
from watchutil import wait_until, write_text

from recall_cli.errors import RecallError
from recall_cli.query.idle import IDLE_AFTER, IDLE_CPU_BUDGET, IDLE_SLICE, MAINTAIN_EVERY, IdleScheduler
from recall_cli.watch.debounce import Debouncer, parse_delay_patterns
from recall_cli.watch.observers import RootObservers, change_of


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def steady(path: str):
    """A snapshot function for paths that are not really on disk: present and unchanging."""
    return (1, 1, False)


# --- debounce -------------------------------------------------------------------------------------


def test_file_written_repeatedly_is_ready_once_after_it_goes_quiet(clock):
    sizes: dict[str, tuple] = {}
    debounce = Debouncer(1.0, clock=clock, snapshot=sizes.get)
    for write in range(6):  # a write every 0.5 s: never quiet for the 1 s delay
        sizes["/r/notes.md"] = (100 * write, write, False)
        debounce.note("modified", "/r/notes.md", "", False)
        clock.advance(0.5)
        assert debounce.take_ready() == []
    clock.advance(0.25)  # 0.75 s quiet
    assert debounce.take_ready() == []
    clock.advance(0.25)  # 1 s quiet
    assert debounce.take_ready() == ["/r/notes.md"]
    clock.advance(10)
    assert debounce.take_ready() == [] and not debounce.pending  # taken once, not again


def test_file_still_growing_without_events_waits_until_it_stops(clock, tmp_path):
    """A copy in progress whose writes raise no event (a network share, a missed event): the real
    lstat snapshot holds it until two looks a delay apart agree."""
    path = tmp_path / "copy.bin"
    path.write_bytes(b"x" * 1000)
    debounce = Debouncer(1.0, clock=clock)
    debounce.note("created", str(path), "", False)
    clock.advance(1.0)
    with open(path, "ab") as handle:
        handle.write(b"y" * 1000)
    assert debounce.take_ready() == []  # quiet by events, but bigger than when it was noted
    clock.advance(0.5)
    assert debounce.take_ready() == []  # the quiet time restarted at the last look
    clock.advance(0.5)
    assert debounce.take_ready() == [str(path)]


def test_delay_pattern_holds_a_matching_path_longer(clock):
    patterns = (("*.log", 10.0), ("*/cache/*", 5.0), ("*.md", 0.1))
    debounce = Debouncer(1.0, patterns, clock=clock, snapshot=steady)
    for path in ("/r/app.log", "/r/cache/blob.bin", "/r/notes.md"):
        debounce.note("modified", path, "", False)
    clock.advance(0.5)
    assert debounce.take_ready() == []  # a shorter pattern never undercuts --delay
    clock.advance(0.5)
    assert debounce.take_ready() == ["/r/notes.md"]
    clock.advance(4.0)
    assert debounce.take_ready() == ["/r/cache/blob.bin"]  # matched on the whole path
    clock.advance(4.0)
    assert debounce.take_ready() == []
    clock.advance(1.0)
    assert debounce.take_ready() == ["/r/app.log"]


def test_move_puts_old_and_new_paths_in_one_batch(clock):
    """A download renamed from .part when done: the new name is ready after 1 s, and the old name,
    still held by its 30 s pattern, comes along so its rows can move instead of being re-encoded."""
    debounce = Debouncer(1.0, (("*.part", 30.0),), clock=clock, snapshot=steady)
    debounce.note("created", "/r/paper.pdf.part", "", False)
    clock.advance(5.0)
    debounce.note("moved", "/r/paper.pdf.part", "/r/paper.pdf", False)
    clock.advance(1.0)
    assert debounce.take_ready() == ["/r/paper.pdf", "/r/paper.pdf.part"]
    assert not debounce.pending


def test_chained_moves_travel_together(clock):
    debounce = Debouncer(1.0, clock=clock, snapshot=steady)
    debounce.note("moved", "/r/a.txt", "/r/b.txt", False)
    debounce.note("moved", "/r/b.txt", "/r/c.txt", False)
    debounce.note("modified", "/r/other.txt", "", False)
    clock.advance(1.0)
    assert debounce.take_ready() == ["/r/a.txt", "/r/b.txt", "/r/c.txt", "/r/other.txt"]


def test_batches_are_capped_but_never_split_a_move(clock):
    debounce = Debouncer(1.0, clock=clock, snapshot=steady, batch_max=2)
    for index in range(5):
        debounce.note("created", f"/r/f{index}.txt", "", False)
    clock.advance(1.0)
    batches = [debounce.take_ready() for _ in range(4)]
    assert [len(batch) for batch in batches] == [2, 2, 1, 0]
    assert sorted(sum(batches, [])) == [f"/r/f{index}.txt" for index in range(5)]

    single = Debouncer(1.0, clock=clock, snapshot=steady, batch_max=1)
    single.note("moved", "/r/old.txt", "/r/new.txt", False)
    clock.advance(1.0)
    assert single.take_ready() == ["/r/new.txt", "/r/old.txt"]


def test_events_that_cannot_change_the_index_are_not_held(clock):
    """Deleting or moving away a path the index never recorded has nothing to prune; a move from
    such a path is then a plain new file, with no partner to copy rows from."""
    recorded = {"/r/indexed.txt"}
    asked = []

    def relevant(path, is_dir, appeared):
        asked.append((path, appeared))
        return appeared or path in recorded

    debounce = Debouncer(1.0, clock=clock, snapshot=steady, relevant=relevant)
    debounce.note("deleted", "/r/never-indexed.txt", "", False)
    assert not debounce.pending
    debounce.note("deleted", "/r/indexed.txt", "", False)
    debounce.note("moved", "/r/unknown.tmp", "/r/kept.txt", False)
    assert set(debounce.pending) == {"/r/indexed.txt", "/r/kept.txt"}
    assert not debounce.pending["/r/kept.txt"].partners
    assert ("/r/indexed.txt", False) in asked and ("/r/kept.txt", True) in asked


def test_every_event_counts_as_activity_even_when_not_held(clock):
    debounce = Debouncer(1.0, clock=clock, relevant=lambda path, is_dir, appeared: False)
    clock.advance(50)
    debounce.note("modified", "/elsewhere/x", "", False)
    assert debounce.last_event == clock() and not debounce.pending


def test_wait_time_wakes_for_the_soonest_deadline(clock):
    debounce = Debouncer(1.0, (("*.log", 60.0),), clock=clock, snapshot=steady)
    assert debounce.wait_time() == 1.0  # nothing pending: the loop's heartbeat
    debounce.note("modified", "/r/app.log", "", False)
    assert debounce.wait_time() == 1.0  # 60 s away: still wake every second
    debounce.note("modified", "/r/a.txt", "", False)
    clock.advance(0.75)
    assert debounce.wait_time() == pytest.approx(0.25)
    clock.advance(5)
    assert debounce.wait_time() == 0.02  # overdue: wake soon, but never spin


def test_parse_delay_patterns():
    assert parse_delay_patterns(["*.log=60", "*.iso:300", "a=b=2.5"]) == (
        ("*.log", 60.0),
        ("*.iso", 300.0),
        ("a=b", 2.5),
    )
    for bad in ("*.log", "=5", "*.log=soon"):
        with pytest.raises(RecallError, match="GLOB=SECONDS"):
            parse_delay_patterns([bad])


# --- idle -----------------------------------------------------------------------------------------


def scheduler(clock, work, compact=lambda: None, interrupted=lambda: False, warnings=None) -> IdleScheduler:
    warn = warnings.append if warnings is not None else (lambda text: None)
    return IdleScheduler(work, compact, interrupted=interrupted, warn=warn, clock=clock)


def test_idle_work_stays_within_its_cpu_share(clock):
    spent, budgets = [], []

    def refine(should_stop, budget_s):  # always more to do; uses its whole slice
        budgets.append(budget_s)
        spent.append(budget_s)
        clock.advance(budget_s)
        return True

    idle = scheduler(clock, refine)
    start = clock()
    while clock() - start < 600:  # the watcher's loop wakes every 0.1 s when nothing happens
        idle.step(clock(), quiet_for=60)
        clock.advance(0.1)
    share = sum(spent) / (clock() - start)
    assert share <= IDLE_CPU_BUDGET + 1e-6
    assert share >= IDLE_CPU_BUDGET * 0.8  # and it does get its share
    assert set(budgets) == {IDLE_SLICE}


def test_idle_work_waits_for_quiet_and_for_pending_events(clock):
    calls = []
    events = queue.SimpleQueue()
    idle = scheduler(
        clock, lambda should_stop, budget_s: calls.append(1) or True, interrupted=lambda: not events.empty()
    )
    assert idle.step(clock(), quiet_for=IDLE_AFTER - 0.1) is None
    events.put("a change")
    assert idle.step(clock(), quiet_for=60) is None
    assert not calls
    events.get()
    assert idle.step(clock(), quiet_for=IDLE_AFTER) == "worked" and calls == [1]


def test_idle_work_stops_as_soon_as_an_event_arrives(clock):
    events = queue.SimpleQueue()
    done = []

    def refine(should_stop, budget_s):  # small units of work, checking between them
        for unit in range(100):
            if should_stop():
                break
            clock.advance(0.001)
            done.append(unit)
            if unit == 4:
                events.put("a file changed")
        return True

    idle = scheduler(clock, refine, interrupted=lambda: not events.empty())
    assert idle.step(clock(), quiet_for=60) == "worked"
    assert len(done) == 5


def test_nothing_to_do_is_asked_again_only_rarely(clock):
    calls = []
    idle = scheduler(clock, lambda should_stop, budget_s: calls.append(clock()) or False)
    for _ in range(600):  # a minute of idle wake-ups
        idle.step(clock(), quiet_for=60)
        clock.advance(0.1)
    assert len(calls) == 2 and calls[1] - calls[0] >= 30


def test_compaction_at_most_once_per_interval_and_only_after_writes(clock):
    compactions = []
    idle = scheduler(clock, lambda should_stop, budget_s: False, compact=lambda: compactions.append(clock()))
    idle.note_compacted(clock())  # the catch-up pass compacted
    start = clock()
    for _ in range(1200):  # 20 minutes with nothing written
        idle.step(clock(), quiet_for=60)
        clock.advance(1.0)
    assert compactions == []
    for _ in range(600):  # 10 minutes with a write every second, idle in between
        idle.note_write()
        idle.step(clock(), quiet_for=60)
        clock.advance(1.0)
    assert len(compactions) == 5
    gaps = [later - earlier for earlier, later in zip([start, *compactions[:-1]], compactions, strict=True)]
    assert min(gaps[1:]) >= MAINTAIN_EVERY


def test_failing_compaction_and_work_warn_and_watching_goes_on(clock):
    warnings = []

    def broken_compact():
        raise OSError("disk full")

    def broken_work(should_stop, budget_s):
        raise RuntimeError("model file vanished")

    idle = scheduler(clock, broken_work, compact=broken_compact, warnings=warnings)
    idle.note_write()
    assert idle.step(clock(), quiet_for=60) == "compacted"
    assert idle.step(clock(), quiet_for=60) == "worked"
    assert idle.step(clock(), quiet_for=60) is None  # neither retried in a tight loop
    assert warnings == ["compaction failed: OSError: disk full", "idle work failed: RuntimeError: model file vanished"]


# --- observers ------------------------------------------------------------------------------------


class Changes:
    """on_change for RootObservers: collects (kind, src, dest, is_dir) from watchdog's threads."""

    def __init__(self):
        self.seen: list[tuple] = []
        self.lock = threading.Lock()

    def __call__(self, kind, src, dest, is_dir) -> None:
        with self.lock:
            self.seen.append((kind, src, dest, is_dir))

    def touched(self, path) -> bool:
        with self.lock:
            return any(str(path) in (src, dest) for _, src, dest, _ in self.seen)


class Log:
    def __init__(self):
        self.lines: list[tuple[str, str, dict]] = []

    def __call__(self, kind, text, **data) -> None:
        self.lines.append((kind, text, data))

    def texts(self, kind) -> list[str]:
        return [text for seen, text, _ in self.lines if seen == kind]


@pytest.fixture
def watched_root(tmp_path):
    root = tmp_path / "files"
    write_text(root / "first.md", "already here")
    return root


def test_change_of_keeps_what_can_change_the_index():
    assert change_of(fs_events.FileOpenedEvent("/r/a.md")) is None
    assert change_of(fs_events.FileClosedNoWriteEvent("/r/a.md")) is None
    assert change_of(fs_events.DirModifiedEvent("/r/sub")) is None
    assert change_of(fs_events.FileClosedEvent("/r/a.md")) == ("closed", "/r/a.md", "", False)
    latin = b"/r/caf\xe9.md"  # not UTF-8: must stay a str path that round-trips to the same bytes
    assert change_of(fs_events.FileCreatedEvent(latin)) == ("created", os.fsdecode(latin), "", False)
    assert change_of(fs_events.FileMovedEvent("/r/a.md", "/r/b.md")) == ("moved", "/r/a.md", "/r/b.md", False)
    assert change_of(fs_events.DirMovedEvent("/r/d", "/r/e")) == ("moved", "/r/d", "/r/e", True)


@pytest.mark.parametrize("poll", [False, True])
def test_a_written_file_reaches_on_change(watched_root, poll):
    changes = Changes()
    observers = RootObservers([str(watched_root)], changes, poll=poll, poll_interval=0.1)
    observers.start()
    try:
        assert observers.mode == ("polling" if poll else "inotify")
        write_text(watched_root / "sub/new.md", "hello")
        wait_until(lambda: changes.touched(watched_root / "sub/new.md"), 10, message="the new file's event")
        assert not observers.take_missed()
    finally:
        observers.stop()


@pytest.mark.parametrize(
    ("code", "key", "bigger"), [(errno.ENOSPC, "max_user_watches", 524288), (errno.EMFILE, "max_user_instances", 1024)]
)
def test_out_of_inotify_falls_back_to_polling_with_the_fix(watched_root, monkeypatch, code, key, bigger):
    from watchdog.observers import Observer

    def out_of_inotify(self, *args, **kwargs):
        raise OSError(code, "inotify limit reached")

    monkeypatch.setattr(Observer, "schedule", out_of_inotify)
    changes, log = Changes(), Log()
    observers = RootObservers([str(watched_root)], changes, poll_interval=0.1, emit=log)
    observers.start()
    try:
        [warning] = log.texts("warning")
        assert f"sudo sysctl fs.inotify.{key}={bigger}" in warning and str(watched_root) in warning
        assert observers.polled == {str(watched_root)} and observers.mode == "polling"
        assert observers.take_missed() and not observers.take_missed()  # reconcile once
        write_text(watched_root / "polled.md", "seen by polling")
        wait_until(lambda: changes.touched(watched_root / "polled.md"), 10, message="the polled event")
    finally:
        observers.stop()


def test_other_scheduling_errors_are_not_hidden(watched_root, monkeypatch):
    from watchdog.observers import Observer

    def denied(self, *args, **kwargs):
        raise OSError(errno.EACCES, "permission denied")

    monkeypatch.setattr(Observer, "schedule", denied)
    observers = RootObservers([str(watched_root)], Changes())
    try:
        with pytest.raises(PermissionError):
            observers.start()
        assert not observers.polled
    finally:
        observers.stop()


def test_inotify_dying_later_moves_the_root_to_polling(watched_root, monkeypatch):
    """Out of watches when a big tree appears: the emitter thread dies; the next check prints the
    fix and polls that root instead of silently missing its changes."""
    from watchdog.observers.inotify import InotifyEmitter

    def out_of_watches(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(InotifyEmitter, "queue_events", out_of_watches)
    changes, log = Changes(), Log()
    observers = RootObservers([str(watched_root)], changes, poll_interval=0.1, emit=log)
    observers.start()
    try:
        assert observers.mode == "inotify"

        def moved_to_polling():
            observers.check()
            return observers.polled

        wait_until(moved_to_polling, 10, message="the dead emitter to be noticed")
        assert "fs.inotify.max_user_watches" in log.texts("warning")[0]
        assert observers.take_missed()
        write_text(watched_root / "later.md", "seen by polling")
        wait_until(lambda: changes.touched(watched_root / "later.md"), 10, message="the polled event")
    finally:
        observers.stop()


def test_missing_root_is_reported_once_and_rewatched_when_back(watched_root, tmp_path):
    changes, log = Changes(), Log()
    root = str(watched_root)
    observers = RootObservers([root], changes, emit=log)
    observers.start()
    try:
        observers.check()
        assert observers.live_roots() == [root] and not log.lines
        os.rename(watched_root, tmp_path / "unplugged")
        observers.check()
        observers.check()
        assert log.texts("warning") == [f"{root} is missing or unmounted; its files stay indexed until it is back"]
        assert observers.live_roots() == [] and observers.missing == {root}
        assert not observers.take_missed()  # nothing to reconcile against while it is away

        os.rename(tmp_path / "unplugged", watched_root)
        observers.check()
        assert log.texts("info") == [f"{root} is back; reconciling"]
        assert observers.live_roots() == [root] and observers.take_missed()
        write_text(watched_root / "after.md", "written after it came back")
        wait_until(lambda: changes.touched(watched_root / "after.md"), 10, message="an event after the return")
    finally:
        observers.stop()


def test_stop_ends_the_observer_threads_and_restores_the_excepthook(watched_root):
    hook_before, threads_before = threading.excepthook, set(threading.enumerate())
    observers = RootObservers([str(watched_root)], Changes(), poll=False)
    observers.start()
    assert set(threading.enumerate()) - threads_before  # it did start threads
    observers.stop()
    assert not [thread for thread in set(threading.enumerate()) - threads_before if thread.is_alive()]
    assert threading.excepthook == hook_before


def test_a_table_grown_past_its_bound_is_compacted_before_the_interval(clock):
    """A busy query loop against `recall watch` writes back all the time: once the table has grown
    past its bound it is compacted at the next idle moment, not MAINTAIN_EVERY later."""
    compactions, grown = [], [False]
    idle = IdleScheduler(
        lambda should_stop, budget_s: False,
        lambda: compactions.append(clock()),
        interrupted=lambda: False,
        grown=lambda: grown[0],
        clock=clock,
    )
    idle.note_compacted(clock())
    idle.note_write()
    clock.advance(1.0)
    idle.step(clock(), quiet_for=60)
    assert compactions == []  # written, but neither the interval nor the bound is reached
    grown[0] = True
    clock.advance(1.0)
    idle.step(clock(), quiet_for=60)
    assert compactions == [clock()]
    clock.advance(1.0)
    idle.step(clock(), quiet_for=60)
    assert len(compactions) == 1  # nothing written since: no compaction, however grown
