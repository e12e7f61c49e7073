"""The filesystem observers behind `recall watch`: which roots are watched, and how.

Every root is watched recursively with inotify (watchdog's Observer), or by polling with --poll.
When the system runs out of inotify watches or instances, that root falls back to polling and one
warning says how to raise the limit (INOTIFY_FIX), rather than the watcher dying or silently missing
changes.  A root that disappears (an unplugged drive, an unmounted share) is reported once and
re-watched when it is back; roots that are missing are left out of live_roots() so that nobody
prunes their files from the index while they are away.

Changes come out as plain (kind, src, dest, is_dir) tuples with str paths, through `on_change`,
called on watchdog's threads; nothing here knows about the index.  Whenever events may have been
lost (a fallback to polling, a root coming back, an emitter thread that died), take_missed() turns
true once, so the watcher can reconcile.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Optional

POLL_INTERVAL = 5.0  # seconds between polls when inotify is not available
INOTIFY_FIX = (
    "the system ran out of inotify {what} (fs.inotify.{key} = {value}); watching {root} by "
    "polling every {interval:g} s instead. To fix: sudo sysctl fs.inotify.{key}={bigger} "
    "and, to keep it after a reboot, echo fs.inotify.{key}={bigger} | "
    "sudo tee /etc/sysctl.d/90-recall-inotify.conf"
)
_OUT_OF_INOTIFY = (errno.ENOSPC, errno.EMFILE)  # ENOSPC: watches; EMFILE: instances

Change = tuple[str, str, str, bool]  # (kind, src, dest or "", is_dir)
Emit = Callable[..., None]  # emit(kind, text, **data), the watcher's log line


def change_of(event) -> Optional[Change]:
    """A watchdog event as a Change, or None for events that cannot change the index: reads, and
    metadata-only events on directories (a directory's contents arrive as their own events)."""
    kind = event.event_type
    if kind in ("opened", "closed_no_write") or (event.is_directory and kind in ("modified", "attrib", "closed")):
        return None
    src = os.fsdecode(event.src_path)  # bytes paths (names that are not UTF-8) stay surrogate-escaped str
    dest = os.fsdecode(event.dest_path) if event.dest_path else ""
    return (kind, src, dest, event.is_directory)


def inotify_limit(key: str) -> str:
    try:
        return Path(f"/proc/sys/fs/inotify/{key}").read_text().strip()
    except OSError:
        return "unknown"


def _no_log(kind: str, text: str, **data) -> None:
    pass


class RootObservers:
    """The observer threads for a fixed list of roots: start(), check() about once a second, stop()."""

    def __init__(
        self,
        roots: list[str],
        on_change: Callable[[str, str, str, bool], None],
        *,
        poll: bool = False,
        poll_interval: float = POLL_INTERVAL,
        emit: Emit = _no_log,
    ):
        self.roots = list(roots)
        self.polled: set[str] = set()  # roots watched by polling (--poll, or out of inotify)
        self.missing: set[str] = set()  # roots that are gone or unmounted, until they are back
        self._on_change = on_change
        self._poll = poll
        self._poll_interval = poll_interval
        self._emit = emit
        self._inotify = None  # watchdog Observer, unless --poll
        self._polling = None  # watchdog PollingObserver, started on first need
        self._watches: dict[str, object] = {}  # root -> ObservedWatch (inotify)
        # a root that is a mount point now must still be one later: an unmounted drive leaves an
        # empty directory behind, which must not read as "every file was deleted"
        self._mounts = {root: os.path.ismount(root) for root in self.roots}
        self._thread_errors: dict[str, BaseException] = {}  # emitter thread name -> why it died
        self._handler = None
        self._previous_excepthook = None
        self._missed = False

    # --- state ------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return "polling" if self.polled and not self._watches else "inotify"

    def take_missed(self) -> bool:
        """True once after events may have been lost: only a full pass can make the index right."""
        missed, self._missed = self._missed, False
        return missed

    def present(self, root: str) -> bool:
        return os.path.isdir(root) and (os.path.ismount(root) or not self._mounts[root])

    def live_roots(self) -> list[str]:
        """Roots that are there now: the only ones whose files may be indexed or pruned."""
        return [root for root in self.roots if root not in self.missing and self.present(root)]

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        on_change = self._on_change

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                change = change_of(event)
                if change is not None:
                    on_change(*change)

        self._handler = Handler()
        self._install_excepthook()
        if not self._poll:
            self._inotify = Observer()
            self._inotify.start()
        for root in self.roots:
            self._watch_root(root)

    def stop(self) -> None:
        for observer in (self._inotify, self._polling):
            if observer is not None:
                try:
                    observer.stop()
                    observer.join(timeout=5)
                except Exception:  # stopping must not hide why the watcher stopped
                    pass
        if self._previous_excepthook is not None and threading.excepthook == self._excepthook:
            threading.excepthook = self._previous_excepthook
        self._previous_excepthook = None

    def _install_excepthook(self) -> None:
        # an emitter thread that dies (e.g. out of inotify watches when a big tree appears) only
        # leaves an exception on its thread; keep it, so check() can tell which fix to print
        self._previous_excepthook = threading.excepthook
        threading.excepthook = self._excepthook

    def _excepthook(self, args) -> None:
        if args.thread is not None:
            self._thread_errors[args.thread.name] = args.exc_value
        if not isinstance(args.exc_value, OSError) and self._previous_excepthook is not None:
            self._previous_excepthook(args)

    # --- scheduling -------------------------------------------------------------------------
    def _watch_root(self, root: str) -> None:
        if self._inotify is not None and root not in self.polled:
            try:
                self._watches[root] = self._inotify.schedule(self._handler, root, recursive=True)
            except OSError as error:
                if error.errno not in _OUT_OF_INOTIFY:
                    raise
                self._inotify_exhausted(root, error)
            return
        self._poll_root(root)

    def _inotify_exhausted(self, root: str, error: OSError) -> None:
        watches = error.errno != errno.EMFILE
        key = "max_user_watches" if watches else "max_user_instances"
        bigger = 524288 if watches else 1024
        self._emit(
            "warning",
            INOTIFY_FIX.format(
                what="watches" if watches else "instances",
                key=key,
                value=inotify_limit(key),
                root=root,
                interval=self._poll_interval,
                bigger=bigger,
            ),
            root=root,
            fix=f"sysctl fs.inotify.{key}={bigger}",
        )
        self._poll_root(root)
        self._missed = True  # events may have been missed while it failed

    def _poll_root(self, root: str) -> None:
        from watchdog.observers.polling import PollingObserver

        if self._polling is None:
            self._polling = PollingObserver(timeout=self._poll_interval)
            self._polling.start()
        self.polled.add(root)
        self._polling.schedule(self._handler, root, recursive=True)

    def _unschedule(self, root: str) -> None:
        watch = self._watches.pop(root, None)
        if watch is not None:
            try:
                self._inotify.unschedule(watch)
            except Exception:  # its emitter may already be gone with the directory
                pass

    def _rewatch(self, root: str) -> None:
        """Watch a root that came back afresh: the old watches point at a directory that is gone."""
        self._unschedule(root)
        if root in self.polled and self._polling is not None:
            for watch in list(self._polling._watches):
                if watch.path == root:
                    self._polling.unschedule(watch)
            self.polled.discard(root)
            if self._inotify is None:  # --poll: polling is all there is
                self.polled.add(root)
                self._polling.schedule(self._handler, root, recursive=True)
                return
        self._watch_root(root)

    # --- health -----------------------------------------------------------------------------
    def check(self) -> None:
        """Roots whose inotify emitter died go to polling; missing roots wait to come back."""
        for root in self.roots:
            if self._check_presence(root):
                self._check_emitter(root)

    def _check_presence(self, root: str) -> bool:
        """Report a root going or coming back; True when it is present and was already watched."""
        if not self.present(root):
            if root not in self.missing:
                self.missing.add(root)
                self._emit(
                    "warning", f"{root} is missing or unmounted; its files stay indexed until it is back", root=root
                )
            return False
        if root in self.missing:
            self.missing.discard(root)
            self._emit("info", f"{root} is back; reconciling", root=root)
            self._rewatch(root)
            self._missed = True
            return False
        return True

    def _check_emitter(self, root: str) -> None:
        watch = self._watches.get(root)
        if watch is None or self._inotify is None:
            return
        emitter = self._inotify._emitter_for_watch.get(watch)
        if emitter is None or emitter.is_alive():
            return
        error = self._thread_errors.get(emitter.name)
        self._unschedule(root)
        if isinstance(error, OSError) and error.errno in _OUT_OF_INOTIFY:
            self._inotify_exhausted(root, error)
        else:
            self._watch_root(root)
            self._missed = True
