"""Debouncing for `recall watch`: which changed paths are ready to be indexed, and together with what.

A path is held after its last event until it has been quiet for its delay (the default --delay, or
longer for a --delay-pattern glob) and its size/mtime stopped changing, so a file that is written
repeatedly, or copied slowly, is encoded once and complete.  Ready paths are taken in batches of at
most BATCH_MAX, and both ends of a move always go into the same batch, so the indexer sees the old
path (to copy its rows from) and the new one together.

Pure logic: the clock and the stat call are injectable, and whether a path can change the index at
all is asked of a `relevant` callback, so nothing here knows about watchdog or the index.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Optional

from recall_cli.errors import RecallError

DEFAULT_DELAY = 3.0  # seconds a file must be quiet before it is indexed
BATCH_MAX = 512  # ready paths per batch (plus their move partners)
LONGEST_WAIT = 1.0  # the watcher's loop wakes at least this often (health checks, reconciliation)
SHORTEST_WAIT = 0.02  # never spin: deadlines closer than this are met on the next wake-up

Snapshot = Optional[tuple]  # (size, mtime_ns, is_dir) at the last look; None: absent
# (path, is_dir, appeared) -> can applying this path change the index?  Asked once, when a path
# first becomes pending: a pending path stays pending whatever its later events.
Relevance = Callable[[str, bool, bool], bool]


def stat_snapshot(path: str) -> Snapshot:
    """What must stay the same between two looks for a path to count as quiet (lstat: a symlink is
    judged by itself, as the indexer does)."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return (info.st_size, info.st_mtime_ns, (info.st_mode & 0o170000) == 0o040000)


def parse_delay_patterns(values: Iterable[str]) -> tuple[tuple[str, float], ...]:
    """`GLOB=SECONDS` (or GLOB:SECONDS, as recoll's mondelaypatterns) -> (glob, seconds)."""
    parsed = []
    for value in values:
        glob, sep, seconds = value.rpartition("=") if "=" in value else value.rpartition(":")
        try:
            if not sep or not glob:
                raise ValueError
            parsed.append((glob, float(seconds)))
        except ValueError:
            raise RecallError(f"--delay-pattern {value!r}: write GLOB=SECONDS, e.g. '*.log=60'") from None
    return tuple(parsed)


@dataclass
class PendingPath:
    last: float  # clock time of the last event (or of the last look that saw it still changing)
    snapshot: Snapshot
    delay: float
    partners: set[str] = field(default_factory=set)  # the other end of a move


def _everything_relevant(path: str, is_dir: bool, appeared: bool) -> bool:
    return True


class Debouncer:
    """Pending paths, keyed by path, each with its own quiet-time deadline."""

    def __init__(
        self,
        delay: float = DEFAULT_DELAY,
        delay_patterns: tuple[tuple[str, float], ...] = (),
        *,
        relevant: Relevance = _everything_relevant,
        clock: Callable[[], float] = time.monotonic,
        snapshot: Callable[[str], Snapshot] = stat_snapshot,
        batch_max: int = BATCH_MAX,
    ):
        self.delay = delay
        self.delay_patterns = delay_patterns
        self.pending: dict[str, PendingPath] = {}
        self.last_event = clock()  # when the last event of any kind arrived (idle work waits for quiet)
        self._relevant = relevant
        self._clock = clock
        self._snapshot = snapshot
        self._batch_max = batch_max

    def __len__(self) -> int:
        return len(self.pending)

    def delay_for(self, path: str) -> float:
        """The first --delay-pattern matching the name or the whole path; a pattern never makes a
        path wait less than --delay (patterns are for paths that need longer, like logs)."""
        name = os.path.basename(path)
        for glob, seconds in self.delay_patterns:
            if fnmatch.fnmatch(name, glob) or fnmatch.fnmatch(path, glob):
                return max(seconds, self.delay)
        return self.delay

    # --- events -----------------------------------------------------------------------------
    def note(self, kind: str, src: str, dest: str, is_dir: bool, now: float | None = None) -> None:
        """One filesystem change (watchdog's event kinds): restart the quiet time of its paths."""
        now = self._clock() if now is None else now
        self.last_event = now
        if kind == "moved":
            self.note_move(src, dest, is_dir, now)
        elif kind == "deleted":
            self.hold(src, is_dir, appeared=False, now=now)
        else:  # created, modified, closed (after writing), attrib (touch)
            self.hold(src, is_dir, appeared=True, now=now)

    def note_move(self, src: str, dest: str, is_dir: bool, now: float) -> None:
        old = self.hold(src, is_dir, appeared=False, now=now)
        new = self.hold(dest, is_dir, appeared=True, now=now) if dest else None
        if old and new:  # only a pair the index will see both ends of can keep its embeddings
            old.partners.add(dest)
            new.partners.add(src)

    def hold(self, path: str, is_dir: bool, appeared: bool, now: float | None = None) -> PendingPath | None:
        """Make `path` pending (or restart its quiet time if it already is); None when the path
        cannot change the index, so events for ignored or unknown paths cost nothing later."""
        now = self._clock() if now is None else now
        item = self.pending.get(path)
        if item is None:
            if not self._relevant(path, is_dir, appeared):
                return None
            item = self.pending[path] = PendingPath(now, self._snapshot(path), self.delay_for(path))
        else:
            item.last = now
            item.snapshot = self._snapshot(path)
        return item

    # --- readiness --------------------------------------------------------------------------
    def wait_time(self, now: float | None = None) -> float:
        """How long the watcher may block waiting for events before some path could be ready."""
        if not self.pending:
            return LONGEST_WAIT
        now = self._clock() if now is None else now
        soonest = min(item.last + item.delay for item in self.pending.values())
        return min(LONGEST_WAIT, max(SHORTEST_WAIT, soonest - now))

    def take_ready(self, now: float | None = None) -> list[str]:
        """Remove and return (sorted) the paths that are ready, plus every move partner of those."""
        now = self._clock() if now is None else now
        ready = self._quiet_paths(now)
        if not ready:
            return []
        batch = self._with_partners(ready)
        for path in batch:
            self.pending.pop(path, None)
        return sorted(batch)

    def _quiet_paths(self, now: float) -> list[str]:
        ready = []
        for path, item in self.pending.items():
            if now - item.last < item.delay:
                continue
            current = self._snapshot(path)
            if current != item.snapshot:  # still growing (a copy in progress, no event seen): wait again
                item.snapshot, item.last = current, now
                continue
            ready.append(path)
            if len(ready) >= self._batch_max:
                break
        return ready

    def _with_partners(self, ready: list[str]) -> set[str]:
        """Follow move partners transitively (a→b then b→c puts a, b and c together), even past
        batch_max and even if a partner is not quiet yet: split up, the old end would be pruned
        before the new end could copy its rows, and the file would be encoded again."""
        batch, stack = set(), list(ready)
        while stack:
            path = stack.pop()
            if path in batch:
                continue
            batch.add(path)
            item = self.pending.get(path)
            if item is not None:
                stack.extend(item.partners)
        return batch
