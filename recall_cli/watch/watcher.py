"""`recall watch`: a live index that follows the filesystem, and survives crashes.

Life of a watcher:
  1. take the index's WriterLock for its whole life (a second watcher, or a `recall index` on the
     same --db, gets the lock's clear message);
  2. start the filesystem observers (observers.py: inotify; polling for roots where inotify ran out
     of watches) and the warm query server, then catch up with a full index pass over the roots;
  3. loop: events go into the debouncer (debounce.py); a path is applied once it has been quiet for
     its delay (default 3 s; longer for --delay-pattern globs) and its size/mtime stopped changing.
     Ready paths are applied together as one batch (indexer.index_locked with those paths): files
     are planned as in `recall index`, directories are walked, absent paths are pruned with
     everything recorded under them.  Both ends of a move go into the same batch, so the new path
     copies the old path's rows (no re-encode) before the old path is pruned;
  4. every --reconcile seconds (and after the machine slept) a full pass makes the index converge
     even if events were dropped; a missing or unmounted root is skipped, never pruned;
  5. when idle, the idle scheduler (idle.py) compacts the table and refines cached rows within a
     CPU budget, stopping as soon as events arrive.
SIGINT/SIGTERM finish the batch in progress and exit 0.  Everything applied is committed batch by
batch (LanceDB first, manifest second), so kill -9 loses at most the batch in flight and the next
start's catch-up pass redoes it.

This module orchestrates; the parts it drives never import it.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from recall_cli.early_exit.refine import refine_idle
from recall_cli.errors import RecallError
from recall_cli.index.indexer import index_locked
from recall_cli.index.options import IndexOptions, IndexSummary, check_roots
from recall_cli.index.scan import IGNORE_FILES, PathFilter
from recall_cli.query.idle import IdleScheduler
from recall_cli.storage.layout import prepare_index_dir
from recall_cli.storage.lock import WriterLock
from recall_cli.storage.manifest import Manifest
from recall_cli.watch.debounce import DEFAULT_DELAY, Debouncer, PendingPath
from recall_cli.watch.observers import POLL_INTERVAL, RootObservers

log = logging.getLogger("recall")

DEFAULT_RECONCILE = 900.0  # seconds between full reconciliation passes (0: never)
HEALTH_EVERY = 1.0  # seconds between checks of the observers and of the wall clock
CLOCK_JUMP = 60.0  # wall clock moving this much more (or less) than the monotonic one: the machine slept
TOTAL_KEYS = ("added", "updated", "moved", "removed", "failed", "skipped")


@dataclass
class WatchOptions:
    index: IndexOptions = field(default_factory=IndexOptions)
    delay: float = DEFAULT_DELAY
    delay_patterns: tuple[tuple[str, float], ...] = ()  # (glob, seconds): slower paths wait longer
    reconcile: float = DEFAULT_RECONCILE
    poll: bool = False  # poll instead of inotify
    poll_interval: float = POLL_INTERVAL
    serve: bool = True  # answer `recall query` over <db>/query.sock
    json_log: bool = False
    quiet: bool = False
    verbose: bool = False


def _changed(summary: IndexSummary) -> int:
    return summary.added + summary.updated + summary.moved + summary.removed + summary.failed


class Watcher:
    def __init__(self, roots: list[str], db_dir: Path, options: WatchOptions = WatchOptions(), stream=None):
        self.db_dir = Path(db_dir)
        self.options = options
        self.stream = stream or sys.stderr
        self.roots = check_roots(roots)
        self.filter = PathFilter(self.roots, options.index.scan)
        self.events: queue.SimpleQueue = queue.SimpleQueue()  # observer threads -> the loop
        self.debounce = Debouncer(options.delay, options.delay_patterns, relevant=self._may_change_index)
        self.observers = RootObservers(
            self.roots, self._push, poll=options.poll, poll_interval=options.poll_interval, emit=self.emit
        )
        self.idle = IdleScheduler(
            self._refine_idle,
            self._compact,
            warn=lambda text: self.emit("warning", text),
            interrupted=lambda: self.stopping() or not self.events.empty(),
            grown=self._grown,
        )
        self._stop = threading.Event()
        self._signals = 0
        self.ready = threading.Event()  # set once caught up and watching
        self.batches = 0
        self.totals = dict.fromkeys(TOTAL_KEYS, 0)
        self.last_batch_at: float | None = None
        self._db_prefix = os.path.realpath(self.db_dir).rstrip(os.sep) + os.sep
        self._server = None
        self._manifest = None
        self._reconcile_due = False
        self._last_reconcile = 0.0
        self._wall_gap = 0.0  # time.time() - time.monotonic() at the last health check

    @property
    def pending(self) -> dict[str, PendingPath]:
        return self.debounce.pending

    # --- logging ----------------------------------------------------------------------------
    def emit(self, kind: str, text: str, **data) -> None:
        if self.options.json_log:
            line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": kind, **data})
        elif self.options.quiet and kind not in ("error", "warning"):
            return
        else:
            line = f"recall: {text}"
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr closed (the terminal went away): keep the index live anyway

    # --- lifecycle --------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        self.events.put(None)  # wake the loop if it is waiting for events

    def stopping(self) -> bool:
        return self._stop.is_set()

    def _on_signal(self, signum, frame) -> None:
        self._signals += 1
        if self._signals > 1:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now (committed batches stay)
        self.stop()

    def run(self) -> int:
        prepare_index_dir(self.db_dir)  # a read-only index: one clear line, not a failing watcher
        with WriterLock(self.db_dir, "watch"):
            previous = {}
            if threading.current_thread() is threading.main_thread():  # signals only work there
                for signum in (signal.SIGINT, signal.SIGTERM):
                    previous[signum] = signal.signal(signum, self._on_signal)
            try:
                return self._run_locked()
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)

    def _run_locked(self) -> int:
        self._manifest = Manifest(self.db_dir)
        try:
            self.observers.start()  # before catching up: nothing that changes during the pass is lost
            self._reconcile_due |= self.observers.take_missed()
            self._start_server()
            self._catch_up()
            if self._server is not None and not self.stopping():
                self._server.warm_up()
            self._announce()
            self.ready.set()
            self._loop()
            self.emit("stopped", "stopped cleanly", batches=self.batches, **self.totals)
            return 0
        finally:
            self.ready.set()
            self.observers.stop()
            if self._server is not None:
                self._server.close()
            self._manifest.close()

    def _start_server(self) -> None:
        if not self.options.serve:
            return
        from recall_cli.query.server import QueryServer, ServerRunning  # lazy: --no-serve never pays for it

        server = QueryServer(
            self.db_dir, status=self.status, device=self.options.index.device, weights=self.options.index.weights
        )
        try:
            server.start()  # an on-demand server of this index hands over first
        except ServerRunning as error:
            self.emit("warning", f"not serving queries: {error}")
            return
        server.on_write = self.idle.note_write  # its write-backs count towards a compaction
        self._server = server

    def _announce(self) -> None:
        mode = self.observers.mode
        socket = self._server.path if self._server else None
        self.emit(
            "watching",
            f"watching {len(self.roots)} root{'s' * (len(self.roots) != 1)} "
            f"({mode}); delay {self.options.delay:g} s" + (f"; warm queries on {socket}" if socket else ""),
            roots=self.roots,
            mode=mode,
            delay=self.options.delay,
            socket=socket,
        )

    def status(self) -> dict:
        """For `recall query --status` through the server (called on its thread)."""
        return {
            "ready": self.ready.is_set(),
            "pending": len(self.debounce) + self.events.qsize(),
            "batches": self.batches,
            "last_batch_at": self.last_batch_at,
            "roots": self.roots,
            "polling": sorted(self.observers.polled),
            "missing": sorted(self.observers.missing),
            **self.totals,
        }

    # --- events -----------------------------------------------------------------------------
    def _push(self, kind: str, src: str, dest: str, is_dir: bool) -> None:
        """Observer thread: hand a change to the loop, unless it is the index itself changing
        (when --db lies inside a root, every batch would otherwise trigger another)."""
        if src.startswith(self._db_prefix) and (not dest or dest.startswith(self._db_prefix)):
            return
        self.events.put((kind, src, dest, is_dir))

    def _drain(self, timeout: float) -> None:
        try:
            item = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        while item is not None:  # None: stop() woke us
            self._note(*item)
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                break

    def _note(self, kind: str, src: str, dest: str, is_dir: bool) -> None:
        now = time.monotonic()
        for path in (src, dest):
            if path and os.path.basename(path) in IGNORE_FILES:  # ignore rules changed: redo the folder
                folder = os.path.dirname(path)
                self.filter.forget(folder)
                self.debounce.hold(folder, True, appeared=True, now=now)
        self.debounce.note(kind, src, dest, is_dir, now)

    def _may_change_index(self, path: str, is_dir: bool, appeared: bool) -> bool:
        """Whether applying `path` can change the index: it appeared or changed and is not
        ignored, or the index has rows there (to prune: deleted, moved away, or renamed to an
        ignored name)."""
        if self.filter.root_of(path) is None or path.startswith(self._db_prefix):
            return False
        if appeared and not self.filter.ignored(path, is_dir):
            return True
        return self._recorded(path, is_dir)

    def _recorded(self, path: str, is_dir: bool) -> bool:
        if self._manifest.records([path]):
            return True
        return is_dir and bool(self._manifest.files_under([path]))

    # --- main loop --------------------------------------------------------------------------
    def _loop(self) -> None:
        self._last_reconcile = time.monotonic()
        self._wall_gap = time.time() - time.monotonic()
        next_health = 0.0
        while not self.stopping():
            self._drain(self.debounce.wait_time())
            if self.stopping():
                break
            now = time.monotonic()
            if now >= next_health:
                next_health = now + HEALTH_EVERY
                self._check_health(now)
            ready = self.debounce.take_ready(now)
            if ready:
                self._apply(ready)
                continue
            if self._reconcile_is_due(now):
                self._reconcile_due = False
                self._last_reconcile = time.monotonic()
                self._reconcile()
                continue
            if not self.debounce.pending and self.events.empty():
                self.idle.step(now, quiet_for=now - self.debounce.last_event)

    def _check_health(self, now: float) -> None:
        self.observers.check()
        self._reconcile_due |= self.observers.take_missed()
        wall_gap = time.time() - now
        if abs(wall_gap - self._wall_gap) > CLOCK_JUMP:  # the machine slept (or the clock jumped): reconcile
            self._reconcile_due = True
        self._wall_gap = wall_gap

    def _reconcile_is_due(self, now: float) -> bool:
        every = self.options.reconcile
        return self._reconcile_due or (every > 0 and now - self._last_reconcile >= every)

    # --- applying changes -------------------------------------------------------------------
    def _apply(self, paths: list[str]) -> None:
        live = set(self.observers.live_roots())
        paths = [path for path in paths if self.filter.root_of(path) in live]  # never prune a missing root
        if not paths:
            return
        try:
            summary = index_locked(
                self.db_dir, self.roots, self.options.index, paths=paths, path_filter=self.filter, maintain=False
            )
        except RecallError:
            raise
        except Exception as error:  # keep watching; a full pass will catch up
            self.emit(
                "error",
                f"batch of {len(paths)} paths failed: {type(error).__name__}: "
                f"{(str(error).splitlines() or [''])[0]}; will reconcile",
                paths=len(paths),
            )
            if self.options.verbose:
                log.exception("batch failed")
            self._reconcile_due = True
            return
        self._record(summary, "batch", len(paths))

    def _catch_up(self) -> None:
        self.emit("catch-up", "catching up with an index pass", roots=self.roots)
        summary = index_locked(self.db_dir, self.roots, self.options.index, should_stop=self.stopping)
        self._record(summary, "catch-up")
        self.idle.note_compacted(time.monotonic())  # a full index pass compacts the table itself

    def _reconcile(self) -> None:
        roots = self.observers.live_roots()
        if not roots:
            return
        try:
            summary = index_locked(self.db_dir, roots, self.options.index, should_stop=self.stopping, maintain=False)
        except Exception as error:  # a failed pass must not end the watcher; the next one retries
            self.emit("error", f"reconciliation failed: {type(error).__name__}: {error}")
            return
        if _changed(summary) or self.options.verbose:
            self._record(summary, "reconcile")

    def _record(self, summary: IndexSummary, kind: str, paths: int | None = None) -> None:
        self.batches += kind == "batch"
        counts = {key: getattr(summary, key) for key in self.totals}
        for key, value in counts.items():
            self.totals[key] += value
        self.last_batch_at = time.time()
        changed = _changed(summary)
        if changed:
            self.idle.note_write()
        if changed or kind != "batch" or self.options.verbose:
            what = {"batch": "batch", "catch-up": "caught up", "reconcile": "reconciled"}[kind]
            size = f" ({paths} paths)" if paths is not None else ""
            self.emit(
                kind,
                f"{what}{size}: {summary.added} added, {summary.updated} updated, "
                f"{summary.moved} moved, {summary.removed} removed, {summary.failed} failed "
                f"({summary.seconds:.2f} s)",
                paths=paths,
                seconds=round(summary.seconds, 3),
                **counts,
                unchanged=summary.unchanged,
            )
        for path, error in summary.failures[:5]:
            self.emit("failure", f"{path}: {error}", path=path, error=error)

    # --- idle work --------------------------------------------------------------------------
    def _refine_idle(self, should_stop, budget_s: float) -> bool:
        return refine_idle(self.db_dir, should_stop, budget_s)

    def _grown(self) -> bool:
        from recall_cli.storage.growth import grown_past_bound

        return grown_past_bound(self.db_dir)

    def _compact(self) -> None:
        """Compact, keeping no old version (storage/growth.py): the queries that could read one are
        this process's, held off meanwhile."""
        from contextlib import nullcontext

        from recall_cli.storage.growth import BOUND_KEEP_VERSIONS_S
        from recall_cli.storage.table import Store  # lazy: lancedb is heavy, and only needed when idle

        with self._server.busy if self._server is not None else nullcontext():
            Store(self.db_dir).maintain(keep_versions_s=BOUND_KEEP_VERSIONS_S)


def watch_roots(roots: list[str], db_dir: Path, options: WatchOptions = WatchOptions()) -> int:
    return Watcher(roots, db_dir, options).run()
