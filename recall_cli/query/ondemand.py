"""The on-demand query server, the way build and language servers work: the first `recall query`
that finds no server answers in-process and then starts a detached one for its index (after its
results are printed: loading beside the query would take the CPU its answer needs); later queries
go through it (one socket round trip, the model already loaded).  The server is the same QueryServer that `recall
watch` runs, on its own, and it goes away by itself:

* after RECALL_SERVER_IDLE seconds without a query (default DEFAULT_IDLE_S);
* on `recall server stop`, or when a `recall watch` of the index takes over;
* when the index is removed or rebuilt (its directory or its socket replaced: a rebuilt index
  may use another model, which this server must never answer for).

While it waits it makes the index more exact: rows that stopped at an early exit are refined from
their INT4 cache and written back (early_exit/refine.refine_idle), as `recall watch` does in its idle
time, paced by query/idle.py (IDLE_AFTER seconds after the last query, at most IDLE_CPU_BUDGET of
the wall time, a slice at a time that stops as soon as a query arrives).  Each slice takes the
writer lock for a moment only, as a query's write-back does; while a `recall index` runs the
server leaves the index alone.  RECALL_SERVER_REFINE=0 turns this off.

RECALL_SERVER_AUTOSTART=0 turns auto-start off (no resident process); RECALL_NO_SERVER=1 or
`recall query --no-server` keeps a query away from any server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

AUTOSTART_ENV = "RECALL_SERVER_AUTOSTART"
IDLE_ENV = "RECALL_SERVER_IDLE"
REFINE_ENV = "RECALL_SERVER_REFINE"
# the writer lock's holder while a slice refines: a name other writers wait for (storage/lock.py)
REFINING_AS = "query server (refining while idle)"
DEFAULT_IDLE_S = 300.0  # a few minutes: a shell loop or an editor session, not a day
CHECK_EVERY_S = 0.5


def idle_seconds(requested: float | None = None) -> float:
    if requested is not None:
        return requested
    try:
        return float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_S))
    except ValueError:
        return DEFAULT_IDLE_S


def autostart_enabled() -> bool:
    from recall_cli.query.server import servers_off

    return _switched_on(AUTOSTART_ENV) and not servers_off()


def _switched_on(name: str) -> bool:
    """An on/off setting that is on unless the environment says 0, no, off or false."""
    return os.environ.get(name, "1").strip().lower() not in ("0", "no", "off", "false")


def start_in_background(db_dir: Path) -> None:
    """Leave a detached server behind for `db_dir` (it exits at once if one is already running)."""
    from recall_cli.storage.layout import MANIFEST_NAME

    if not autostart_enabled() or not (Path(db_dir) / MANIFEST_NAME).exists():
        return
    subprocess.Popen(
        [sys.executable, "-m", "recall_cli", "server", "run", "--db", os.fspath(db_dir)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not the terminal's: Ctrl-C and a closed shell leave it alone
        close_fds=True,
    )


def run_server(db_dir: Path, idle_s: float | None = None) -> int:
    """Serve `db_dir` in this process until idle, stopped, or the index is gone (`recall server
    run`).  Returns 0, also when another server already serves it."""
    import signal

    from recall_cli.query.server import QueryServer, ServerRunning

    idle = idle_seconds(idle_s)
    identity = _index_identity(db_dir)
    server = QueryServer(db_dir, on_demand=True)
    try:
        server.start()
    except ServerRunning:
        return 0
    signal.signal(signal.SIGTERM, lambda *_: server.stop_requested.set())
    if _switched_on(REFINE_ENV):
        server.on_idle = _idle_refinement(server)
    try:
        server.warm_up()
        while not server.stop_requested.wait(CHECK_EVERY_S):
            quiet = time.monotonic() - server.last_request
            if quiet > idle or _index_identity(db_dir) != identity or not server.socket_is_ours():
                break
    finally:
        server.close()
    return 0


def _idle_refinement(server):
    """The server's idle hook: refinement slices, paced by query/idle.py (no compaction: the server
    compacts on its own schedule)."""
    from recall_cli.query.idle import IdleScheduler

    def interrupted() -> bool:
        return server.stop_requested.is_set() or server.request_waiting()

    scheduler = IdleScheduler(
        lambda should_stop, budget_s: _refine_slice(server, should_stop, budget_s), None, interrupted=interrupted
    )
    return lambda quiet_for: scheduler.step(time.monotonic(), quiet_for)


def _refine_slice(server, should_stop, budget_s: float) -> bool:
    """One slice of refinement under the writer lock; False (nothing to do now) while another
    process writes the index."""
    from recall_cli.early_exit.refine import refine_idle
    from recall_cli.errors import RecallError
    from recall_cli.storage.lock import WriterLock

    try:
        with server.busy, WriterLock(server.db_dir, REFINING_AS):
            refined = refine_idle(server.db_dir, should_stop, budget_s, lambda: server.searcher().model)
    except RecallError:  # an index run (or an empty index): the next slice tries again
        return False
    if refined:
        server.writes_since_compaction += 1  # its write-backs count towards an idle compaction
    return refined


def _index_identity(db_dir: Path) -> tuple | None:
    """What changes when the index is removed or rebuilt (rebuild swaps in a new directory)."""
    try:
        info = os.stat(db_dir)
    except OSError:
        return None
    return info.st_dev, info.st_ino
