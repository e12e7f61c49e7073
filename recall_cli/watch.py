"""`recall watch`: a live index that follows the filesystem, and survives crashes.

Life of a watcher:
  1. take the index's WriterLock for its whole life (a second watcher, or a `recall index` on the
     same --db, gets the lock's clear message);
  2. start the filesystem observer (inotify; polling for roots where inotify ran out of watches)
     and the warm query server, then catch up with a full index pass over the roots;
  3. loop: events go into a pending set; a path is applied once it has been quiet for its delay
     (default 3 s; longer for --delay-pattern globs) and its size/mtime stopped changing.  Ready
     paths are applied together as one batch (indexer.index_locked with those paths): files are
     planned as in `recall index`, directories are walked, absent paths are pruned with everything
     recorded under them.  Both ends of a move go into the same batch, so the new path copies the
     old path's rows (no re-encode) before the old path is pruned;
  4. every --reconcile seconds (and after the machine slept) a full pass makes the index converge
     even if events were dropped; a missing or unmounted root is skipped, never pruned;
  5. when idle, the idle-work hook may refine cached rows within a CPU budget, stopping as soon as
     events arrive; compaction of the table also happens when idle.
SIGINT/SIGTERM finish the batch in progress and exit 0.  Everything applied is committed batch by
batch (LanceDB first, manifest second), so kill -9 loses at most the batch in flight and the next
start's catch-up pass redoes it.
"""

from __future__ import annotations

import errno
import fnmatch
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
from typing import Callable

from .errors import RecallError
from .indexer import IndexOptions, IndexSummary, check_roots, index_locked
from .lock import WriterLock
from .refine import refine_idle
from .manifest import Manifest
from .paths import prepare_index_dir
from .scan import IGNORE_FILES, PathFilter

log = logging.getLogger("recall")

DEFAULT_DELAY = 3.0  # seconds a file must be quiet before it is indexed
DEFAULT_RECONCILE = 900.0  # seconds between full reconciliation passes (0: never)
POLL_INTERVAL = 5.0  # seconds between polls when inotify is not available
BATCH_MAX = 512  # ready paths per batch (plus their move partners)
IDLE_AFTER = 2.0  # seconds without events before idle work starts
MAINTAIN_EVERY = 120.0  # at most one table compaction per this many seconds, when idle
IDLE_SLICE = 0.5  # seconds of idle work per call
IDLE_CPU_BUDGET = 0.25  # share of wall time idle work may use


def no_idle_work(db_dir: Path, should_stop: Callable[[], bool], budget_s: float) -> bool:
    """Idle-work hook: refine cached rows for at most `budget_s` seconds, returning early when
    `should_stop()` turns true; return True if there was work (call again), False if none.
    A no-op until speculative refinement lands (it replaces IDLE_WORK)."""
    return False


IDLE_WORK: Callable[[Path, Callable[[], bool], float], bool] = refine_idle  # speculative refinement

INOTIFY_FIX = ("the system ran out of inotify {what} (fs.inotify.{key} = {value}); watching {root} by "
               "polling every {interval:g} s instead. To fix: sudo sysctl fs.inotify.{key}={bigger} "
               "and, to keep it after a reboot, echo fs.inotify.{key}={bigger} | "
               "sudo tee /etc/sysctl.d/90-recall-inotify.conf")


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


def parse_delay_patterns(values: list[str]) -> tuple[tuple[str, float], ...]:
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
class _Pending:
    last: float  # monotonic time of the last event
    snapshot: tuple | None  # (size, mtime_ns, is_dir) at the last look; None: absent
    delay: float
    partners: set[str] = field(default_factory=set)  # the other end of a move


def _snapshot(path: str) -> tuple | None:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return (info.st_size, info.st_mtime_ns, (info.st_mode & 0o170000) == 0o040000)


def _inotify_limit(key: str) -> str:
    try:
        return Path(f"/proc/sys/fs/inotify/{key}").read_text().strip()
    except OSError:
        return "unknown"


class Watcher:
    def __init__(self, roots: list[str], db_dir: Path, options: WatchOptions = WatchOptions(),
                 stream=None):
        self.db_dir = Path(db_dir)
        self.options = options
        self.stream = stream or sys.stderr
        self.roots = check_roots(roots)
        self.filter = PathFilter(self.roots, options.index.scan)
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.pending: dict[str, _Pending] = {}
        self._stop = threading.Event()
        self._signals = 0
        self.ready = threading.Event()  # set once caught up and watching
        self.batches = 0
        self.totals = {"added": 0, "updated": 0, "moved": 0, "removed": 0, "failed": 0, "skipped": 0}
        self.last_batch_at: float | None = None
        self.last_event = time.monotonic()
        self._db_prefix = os.path.realpath(self.db_dir).rstrip(os.sep) + os.sep
        self._observer = None
        self._polling = None
        self._watches: dict[str, object] = {}  # root -> ObservedWatch (inotify)
        self._polled: set[str] = set()
        self._missing: set[str] = set()
        self._mounts = {root: os.path.ismount(root) for root in self.roots}
        self._thread_errors: dict[str, BaseException] = {}
        self._server = None
        self._manifest = None
        self._reconcile_due = False
        self._wrote_since_maintain = False
        self._last_maintain = 0.0
        self._idle_next = 0.0

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
            pass

    # --- lifecycle --------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        self.events.put(None)

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
            if threading.current_thread() is threading.main_thread():
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
            self._start_observer()
            if self.options.serve:
                from .server import QueryServer

                self._server = QueryServer(self.db_dir, status=self.status, device=self.options.index.device,
                                           weights=self.options.index.weights)
                self._server.start()
            self._catch_up()
            if self._server is not None and not self.stopping():
                self._server.warm_up()
            mode = "polling" if self._polled and not self._watches else "inotify"
            self.emit("watching", f"watching {len(self.roots)} root{'s' * (len(self.roots) != 1)} "
                      f"({mode}); delay {self.options.delay:g} s"
                      + (f"; warm queries on {self._server.path}" if self._server else ""),
                      roots=self.roots, mode=mode, delay=self.options.delay,
                      socket=self._server.path if self._server else None)
            self.ready.set()
            self._loop()
            self.emit("stopped", "stopped cleanly", batches=self.batches, **self.totals)
            return 0
        finally:
            self.ready.set()
            self._stop_observer()
            if self._server is not None:
                self._server.close()
            self._manifest.close()

    def status(self) -> dict:
        return {"ready": self.ready.is_set(), "pending": len(self.pending) + self.events.qsize(),
                "batches": self.batches, "last_batch_at": self.last_batch_at, "roots": self.roots,
                "polling": sorted(self._polled), "missing": sorted(self._missing), **self.totals}

    # --- observer ---------------------------------------------------------------------------
    def _start_observer(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                watcher._push(event)

        self._handler = Handler()
        previous_hook = threading.excepthook

        def excepthook(args) -> None:  # an emitter thread that died (e.g. out of inotify watches)
            if args.thread is not None:
                self._thread_errors[args.thread.name] = args.exc_value
            if not isinstance(args.exc_value, OSError):
                previous_hook(args)

        threading.excepthook = excepthook
        if not self.options.poll:
            self._observer = Observer()
            self._observer.start()
        for root in self.roots:
            self._watch_root(root)

    def _watch_root(self, root: str) -> None:
        if self._observer is not None and root not in self._polled:
            try:
                self._watches[root] = self._observer.schedule(self._handler, root, recursive=True)
                return
            except OSError as error:
                if error.errno not in (errno.ENOSPC, errno.EMFILE):
                    raise
                self._inotify_exhausted(root, error)
                return
        self._poll_root(root)

    def _inotify_exhausted(self, root: str, error: OSError) -> None:
        watches = error.errno != errno.EMFILE
        key = "max_user_watches" if watches else "max_user_instances"
        value = _inotify_limit(key)
        bigger = 524288 if watches else 1024
        self.emit("warning", INOTIFY_FIX.format(what="watches" if watches else "instances", key=key, value=value,
                                                root=root, interval=self.options.poll_interval,
                                                bigger=bigger), root=root, fix=f"sysctl fs.inotify.{key}={bigger}")
        self._poll_root(root)
        self._reconcile_due = True  # events may have been missed while it failed

    def _poll_root(self, root: str) -> None:
        from watchdog.observers.polling import PollingObserver

        if self._polling is None:
            self._polling = PollingObserver(timeout=self.options.poll_interval)
            self._polling.start()
        self._polled.add(root)
        self._polling.schedule(self._handler, root, recursive=True)

    def _check_observer(self) -> None:
        """Roots whose inotify emitter died go to polling; missing roots wait to come back."""
        for root in self.roots:
            present = os.path.isdir(root) and (os.path.ismount(root) or not self._mounts[root])
            if not present:
                if root not in self._missing:
                    self._missing.add(root)
                    self.emit("warning", f"{root} is missing or unmounted; its files stay indexed until it "
                              "is back", root=root)
                continue
            if root in self._missing:
                self._missing.discard(root)
                self.emit("info", f"{root} is back; reconciling", root=root)
                self._rewatch(root)
                self._reconcile_due = True
                continue
            watch = self._watches.get(root)
            if watch is None or self._observer is None:
                continue
            emitter = self._observer._emitter_for_watch.get(watch)  # noqa: SLF001
            if emitter is not None and not emitter.is_alive():
                error = self._thread_errors.get(emitter.name)
                self._unschedule(root)
                if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EMFILE):
                    self._inotify_exhausted(root, error)
                else:
                    self._watch_root(root)
                    self._reconcile_due = True

    def _unschedule(self, root: str) -> None:
        watch = self._watches.pop(root, None)
        if watch is not None:
            try:
                self._observer.unschedule(watch)
            except Exception:  # noqa: BLE001
                pass

    def _rewatch(self, root: str) -> None:
        self._unschedule(root)
        if root in self._polled and self._polling is not None:
            for watch in list(self._polling._watches):  # noqa: SLF001
                if watch.path == root:
                    self._polling.unschedule(watch)
            self._polled.discard(root)
            if self._observer is None:
                self._polled.add(root)
                self._polling.schedule(self._handler, root, recursive=True)
                return
        self._watch_root(root)

    def _stop_observer(self) -> None:
        for observer in (self._observer, self._polling):
            if observer is not None:
                try:
                    observer.stop()
                    observer.join(timeout=5)
                except Exception:  # noqa: BLE001
                    pass

    def _push(self, event) -> None:
        """Observer thread: keep what can change the index."""
        kind = event.event_type
        if kind in ("opened", "closed_no_write") or (event.is_directory and kind in ("modified", "attrib", "closed")):
            return
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path) if event.dest_path else ""
        if src.startswith(self._db_prefix) and (not dest or dest.startswith(self._db_prefix)):
            return  # the index itself (when --db lies inside a root)
        self.events.put((kind, src, dest, event.is_directory))

    # --- main loop --------------------------------------------------------------------------
    def _loop(self) -> None:
        last_reconcile = time.monotonic()
        last_health = 0.0
        clock_gap = time.time() - time.monotonic()
        while not self.stopping():
            self._drain(self._wait_time())
            if self.stopping():
                break
            now = time.monotonic()
            if now - last_health >= 1.0:
                last_health = now
                self._check_observer()
                gap = time.time() - now
                if abs(gap - clock_gap) > 60:  # the machine slept (or the clock jumped): reconcile
                    self._reconcile_due = True
                clock_gap = gap
            ready = self._take_ready(now)
            if ready:
                self._apply(ready)
                continue
            reconcile = self.options.reconcile
            if self._reconcile_due or (reconcile > 0 and now - last_reconcile >= reconcile):
                self._reconcile_due = False
                last_reconcile = time.monotonic()
                self._reconcile()
                continue
            if not self.pending and self.events.empty() and now - self.last_event >= IDLE_AFTER:
                self._idle(now)

    def _wait_time(self) -> float:
        if not self.pending:
            return 1.0
        now = time.monotonic()
        soonest = min(item.last + item.delay for item in self.pending.values())
        return min(1.0, max(0.02, soonest - now))

    def _drain(self, timeout: float) -> None:
        try:
            item = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        while item is not None:
            self._note(*item)
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                break

    def _delay_for(self, path: str) -> float:
        name = os.path.basename(path)
        for glob, seconds in self.options.delay_patterns:
            if fnmatch.fnmatch(name, glob) or fnmatch.fnmatch(path, glob):
                return max(seconds, self.options.delay)
        return self.options.delay

    def _recorded(self, path: str, is_dir: bool) -> bool:
        if self._manifest.records([path]):
            return True
        return is_dir and bool(self._manifest.files_under([path]))

    def _note(self, kind: str, src: str, dest: str, is_dir: bool) -> None:
        now = time.monotonic()
        self.last_event = now
        for path in (src, dest):
            if path and os.path.basename(path) in IGNORE_FILES:  # ignore rules changed: redo the folder
                folder = os.path.dirname(path)
                self.filter.forget(folder)
                self._queue(folder, now, True, appeared=True)
        if kind == "moved":
            old = self._queue(src, now, is_dir, appeared=False)
            new = self._queue(dest, now, is_dir, appeared=True) if dest else None
            if old and new:
                old.partners.add(dest)
                new.partners.add(src)
        elif kind == "deleted":
            self._queue(src, now, is_dir, appeared=False)
        else:  # created, modified, closed (after writing), attrib (touch)
            self._queue(src, now, is_dir, appeared=True)

    def _queue(self, path: str, now: float, is_dir: bool, appeared: bool) -> _Pending | None:
        """Add a path to the pending set if applying it can change the index: it appeared or
        changed and is not ignored, or it is already pending, or the index has rows there (to
        prune: deleted, moved away, or renamed to an ignored name)."""
        if self.filter.root_of(path) is None or path.startswith(self._db_prefix):
            return None
        item = self.pending.get(path)
        if item is None:
            wanted = appeared and not self.filter.ignored(path, is_dir)
            if not wanted and not self._recorded(path, is_dir):
                return None
            item = self.pending[path] = _Pending(now, _snapshot(path), self._delay_for(path))
        else:
            item.last = now
            item.snapshot = _snapshot(path)
        return item

    def _take_ready(self, now: float) -> list[str]:
        ready = []
        for path, item in self.pending.items():
            if now - item.last < item.delay:
                continue
            current = _snapshot(path)
            if current != item.snapshot:  # still growing (a copy in progress, no event seen)
                item.snapshot, item.last = current, now
                continue
            ready.append(path)
            if len(ready) >= BATCH_MAX:
                break
        if not ready:
            return []
        batch, stack = set(), list(ready)
        while stack:  # both ends of every move in the same batch
            path = stack.pop()
            if path in batch:
                continue
            batch.add(path)
            item = self.pending.get(path)
            if item is not None:
                stack.extend(item.partners)
        for path in batch:
            self.pending.pop(path, None)
        return sorted(batch)

    def _live_roots(self) -> list[str]:
        return [root for root in self.roots if root not in self._missing and os.path.isdir(root)
                and (os.path.ismount(root) or not self._mounts[root])]

    def _apply(self, paths: list[str]) -> None:
        live = set(self._live_roots())
        paths = [path for path in paths if self.filter.root_of(path) in live]
        if not paths:
            return
        try:
            summary = index_locked(self.db_dir, self.roots, self.options.index, paths=paths,
                                   path_filter=self.filter, maintain=False)
        except RecallError:
            raise
        except Exception as error:  # noqa: BLE001 - keep watching; a full pass will catch up
            self.emit("error", f"batch of {len(paths)} paths failed: {type(error).__name__}: "
                      f"{(str(error).splitlines() or [''])[0]}; will reconcile", paths=len(paths))
            if self.options.verbose:
                log.exception("batch failed")
            self._reconcile_due = True
            return
        self._record(summary, "batch", len(paths))

    def _record(self, summary: IndexSummary, kind: str, paths: int | None = None) -> None:
        self.batches += kind == "batch"
        counts = {key: getattr(summary, key) for key in self.totals}
        for key, value in counts.items():
            self.totals[key] += value
        self.last_batch_at = time.time()
        changed = summary.added + summary.updated + summary.moved + summary.removed + summary.failed
        if changed:
            self._wrote_since_maintain = True
        if changed or kind != "batch" or self.options.verbose:
            what = {"batch": "batch", "catch-up": "caught up", "reconcile": "reconciled"}[kind]
            size = f" ({paths} paths)" if paths is not None else ""
            self.emit(kind, f"{what}{size}: {summary.added} added, {summary.updated} updated, "
                      f"{summary.moved} moved, {summary.removed} removed, {summary.failed} failed "
                      f"({summary.seconds:.2f} s)", paths=paths, seconds=round(summary.seconds, 3), **counts,
                      unchanged=summary.unchanged)
        for path, error in summary.failures[:5]:
            self.emit("failure", f"{path}: {error}", path=path, error=error)

    def _catch_up(self) -> None:
        self.emit("catch-up", "catching up with an index pass", roots=self.roots)
        summary = index_locked(self.db_dir, self.roots, self.options.index, should_stop=self.stopping)
        self._record(summary, "catch-up")
        self._last_maintain = time.monotonic()

    def _reconcile(self) -> None:
        roots = self._live_roots()
        if not roots:
            return
        try:
            summary = index_locked(self.db_dir, roots, self.options.index, should_stop=self.stopping,
                                   maintain=False)
        except Exception as error:  # noqa: BLE001
            self.emit("error", f"reconciliation failed: {type(error).__name__}: {error}")
            return
        changed = summary.added + summary.updated + summary.moved + summary.removed + summary.failed
        if changed or self.options.verbose:
            self._record(summary, "reconcile")

    def _idle(self, now: float) -> None:
        if self._wrote_since_maintain and now - self._last_maintain >= MAINTAIN_EVERY - 1e-9:
            self._wrote_since_maintain = False
            self._last_maintain = now
            try:
                from .store import Store

                Store(self.db_dir).maintain()
            except Exception as error:  # noqa: BLE001
                self.emit("warning", f"compaction failed: {type(error).__name__}: {error}")
            return
        if now < self._idle_next:
            return
        started = time.monotonic()
        try:
            busy = IDLE_WORK(self.db_dir, lambda: self.stopping() or not self.events.empty(), IDLE_SLICE)
        except Exception as error:  # noqa: BLE001
            self.emit("warning", f"idle work failed: {type(error).__name__}: {error}")
            busy = False
        spent = time.monotonic() - started
        # within the CPU budget: rest (1 - b) / b times what was spent; nothing to do: check rarely
        self._idle_next = time.monotonic() + (spent * (1 - IDLE_CPU_BUDGET) / IDLE_CPU_BUDGET if busy else 30.0)


def watch_roots(roots: list[str], db_dir: Path, options: WatchOptions = WatchOptions()) -> int:
    return Watcher(roots, db_dir, options).run()
