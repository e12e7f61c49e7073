"""Idle time in a process that stays running for the user (`recall watch`, the query server):
table compaction and background refinement, never in the way.

When nothing has happened (no file event, no query) for IDLE_AFTER seconds the process hands its
idle time to this scheduler, which does one of two things per call:
  * compaction of the table, when something was written since the last one (a batch, or a query's
    write-back), at most once every MAINTAIN_EVERY seconds (each batch adds small fragments;
    compacting after every batch would cost more than it saves), or at once when the table has
    grown past its bound (storage/growth.py: a busy query loop);
  * one slice (IDLE_SLICE seconds) of idle work, i.e. refining cached rows, then rests so that idle
    work uses at most IDLE_CPU_BUDGET of wall time: a process left running must not keep a laptop's
    fan on.  The work is told to stop as soon as an event or a query arrives, so neither waits for it.

The work and compaction functions, the warning sink and the clock are injected: nothing here
touches the index by itself.  `compact` None: the process compacts on its own schedule (the
on-demand query server does, query/server.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

IDLE_AFTER = 2.0  # seconds without events before idle work starts
MAINTAIN_EVERY = 120.0  # at most one table compaction per this many seconds, when idle
IDLE_SLICE = 0.5  # seconds of idle work per call
IDLE_CPU_BUDGET = 0.25  # share of wall time idle work may use
NOTHING_TO_DO_RECHECK = 30.0  # seconds before asking again a work function that had nothing to do

# (should_stop, budget_s) -> True if there was work (call again), False if none is left.  It must
# return within about budget_s, and early once should_stop() is true.
IdleWork = Callable[[Callable[[], bool], float], bool]


def rest_after(spent: float, cpu_budget: float = IDLE_CPU_BUDGET) -> float:
    """Seconds to rest after `spent` seconds of work so that work / (work + rest) == cpu_budget."""
    return spent * (1 - cpu_budget) / cpu_budget


class IdleScheduler:
    """Decides what, if anything, to do with a moment of idle time."""

    def __init__(
        self,
        work: IdleWork,
        compact: Callable[[], None] | None,
        *,
        interrupted: Callable[[], bool],
        grown: Callable[[], bool] = lambda: False,
        warn: Callable[[str], None] = lambda text: None,
        clock: Callable[[], float] = time.monotonic,
        idle_after: float = IDLE_AFTER,
        maintain_every: float = MAINTAIN_EVERY,
        slice_s: float = IDLE_SLICE,
        cpu_budget: float = IDLE_CPU_BUDGET,
    ):
        self._work = work
        self._compact = compact
        self._interrupted = interrupted  # an event is waiting (or the watcher is stopping)
        self._grown = grown  # the table has grown past its bound (storage/growth.py): compact now
        self._warn = warn
        self._clock = clock
        self.idle_after = idle_after
        self.maintain_every = maintain_every
        self.slice_s = slice_s
        self.cpu_budget = cpu_budget
        self._wrote_since_compaction = False
        self._last_compaction = 0.0
        self._work_not_before = 0.0

    def note_write(self) -> None:
        """Something was written to the table: a compaction is worth doing when the interval allows."""
        self._wrote_since_compaction = True

    def note_compacted(self, now: float | None = None) -> None:
        """The table was just compacted elsewhere (a full index pass does it): the interval restarts."""
        self._last_compaction = self._clock() if now is None else now

    def step(self, now: float, quiet_for: float) -> str | None:
        """Use a moment in which no event arrived for `quiet_for` seconds: 'compacted', 'worked'
        (a slice of idle work ran, whether or not it found anything), or None (nothing was due)."""
        if quiet_for < self.idle_after or self._interrupted():
            return None
        if self._compaction_due(now):
            self._run_compaction(now)
            return "compacted"
        if now < self._work_not_before:
            return None
        self._run_work_slice()
        return "worked"

    def _compaction_due(self, now: float) -> bool:
        if self._compact is None or not self._wrote_since_compaction:
            return False
        # the epsilon: a caller stepping exactly every maintain_every seconds must not slip a round
        return now - self._last_compaction >= self.maintain_every - 1e-9 or self._grown()

    def _run_compaction(self, now: float) -> None:
        self._wrote_since_compaction = False
        self._last_compaction = now  # also on failure: a broken table is not retried in a tight loop
        try:
            self._compact()
        except Exception as error:  # the watcher keeps indexing without compaction
            self._warn(f"compaction failed: {type(error).__name__}: {error}")

    def _run_work_slice(self) -> None:
        started = self._clock()
        try:
            busy = self._work(self._interrupted, self.slice_s)
        except Exception as error:  # idle work is optional; indexing goes on
            self._warn(f"idle work failed: {type(error).__name__}: {error}")
            busy = False
        spent = self._clock() - started
        rest = rest_after(spent, self.cpu_budget) if busy else NOTHING_TO_DO_RECHECK
        self._work_not_before = self._clock() + rest
