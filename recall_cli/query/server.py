"""Warm queries: `recall watch` keeps the query encoder loaded and answers `recall query` over a
Unix domain socket in the index directory (`<db>/query.sock`, mode 0600 inside the 0700 index
directory, so only its owner can connect).

Protocol (version 1): the client connects, sends one JSON object and a newline, and reads one JSON
object back until the server closes the connection.

    request:  {"protocol": 1, "version": "<recall version>", "op": "query", "texts": [...],
               "limit": 10, "offset": 0, "modality": null, "within": "/abs/dir" | null,
               "like": "/abs/file" | null, "since": null, "until": null, "min_score": null,
               "refine": "auto" | "exact" | "off", "budget": null}
              {"protocol": 1, "op": "status"}
    reply:    {"protocol": 1, "ok": true, "results": [[result, ...] per text]}
              {"protocol": 1, "ok": true, "status": {...}}          (op status)
              {"protocol": 1, "ok": false, "error": "one line", "exit": 2}

The client half (`request`, `warm_query`) imports only the standard library's socket/json/os, so a
warm `recall query` never loads torch, lancedb, numpy or rich.  Any failure to reach a server (no
socket, a stale one left by a killed watcher, another recall version) returns None and the caller
loads the model itself, with identical results.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import threading
import time

from recall_cli.query.options import QueryOptions
from recall_cli.storage.layout import SERVER_LOCK, SOCKET_NAME

PROTOCOL = 1
NO_SERVER_ENV = "RECALL_NO_SERVER"  # set to 1: never use a running watcher (benchmarks, debugging)
_MAX_UNIX_PATH = 100  # sun_path is 108 bytes on Linux, 104 on macOS
MAX_REQUEST_BYTES = 1 << 20  # a query request is a few hundred bytes; anything near this is not one
TAKEOVER_WAIT_S = 5.0  # how long `recall watch` waits for an on-demand server to hand over
# Each write-back leaves a version and a small fragment behind; the write-back itself compacts once they
# pass the growth bound (storage/growth.py), between two requests.  Below the bound an on-demand server
# also compacts when idle, at most this often, so the fragments of a quiet day's queries do not linger.
COMPACT_EVERY_S = 600.0
COMPACT_WHEN_IDLE_S = 2.0


def servers_off() -> bool:
    """RECALL_NO_SERVER set (and not 0): queries neither ask a server nor start one."""
    return os.environ.get(NO_SERVER_ENV, "") not in ("", "0")


def socket_path(db_dir) -> str:
    return os.path.join(os.fspath(db_dir), SOCKET_NAME)


def _address(path: str) -> tuple[str, int | None]:
    """A connectable name for `path`: itself, or via /proc/self/fd when it is too long."""
    if len(os.fsencode(path)) <= _MAX_UNIX_PATH:
        return path, None
    if not os.path.isdir("/proc/self/fd"):
        raise OSError(f"socket path too long: {path}")
    fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{os.path.basename(path)}", fd


def _version() -> str:
    from recall_cli import __version__

    return __version__


def request(db_dir, payload: dict, timeout: float = 300.0) -> dict | None:
    """Send one request to the watcher serving `db_dir`; None when there is none to ask."""
    path = socket_path(db_dir)
    try:
        info = os.stat(path)
    except OSError:
        return None
    import stat

    if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.getuid():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fd = None
    try:
        address, fd = _address(path)
        sock.settimeout(2.0)
        sock.connect(address)
        sock.settimeout(timeout)
        sock.sendall(json.dumps(dict(payload, protocol=PROTOCOL, version=_version())).encode() + b"\n")
        chunks = []
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        reply = json.loads(b"".join(chunks))
    except (OSError, ValueError):
        return None  # refused (stale socket), timed out, or cut off: the caller works alone
    finally:
        sock.close()
        if fd is not None:
            os.close(fd)
    if not isinstance(reply, dict) or reply.get("protocol") != PROTOCOL or reply.get("mismatch"):
        return None
    return reply


def warm_query(db_dir, texts: list[str], options: QueryOptions) -> list[list[dict]] | None:
    """Results from the running server, or None (no server: load the model here)."""
    if servers_off():
        return None
    reply = request(db_dir, {"op": "query", "texts": texts, **options.to_request()})
    if reply is None:
        return None
    if not reply.get("ok"):
        from recall_cli.errors import RecallError

        error = RecallError(reply.get("error") or "the watcher could not answer")
        error.exit_code = int(reply.get("exit", 2))
        raise error
    return reply["results"]


# --- server side (inside `recall watch`, or on its own: query/ondemand.py) -----------------------


class ServerRunning(Exception):
    """Another query server holds the index's server lock."""


def peer_uid(conn: socket.socket) -> int | None:
    """The user id of the process at the other end of a Unix socket; None where the platform does
    not say (the socket's 0600 mode in the 0700 index directory still keeps others out)."""
    if hasattr(socket, "SO_PEERCRED"):  # Linux: struct ucred {pid, uid, gid}
        return struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]
    if sys.platform == "darwin":  # LOCAL_PEERCRED: struct xucred {version, uid, ngroups, groups[16]}
        return struct.unpack_from("2I", conn.getsockopt(0, 0x001, struct.calcsize("2Ih16I")))[1]
    return None


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


class QueryServer:
    """Answers requests one at a time on a background thread, with a Searcher built once (the
    model stays loaded) and refreshed to the table's latest version before every query.

    One per index (the server lock): inside `recall watch` (`on_demand` False: the watcher holds
    the writer lock, and stops it with itself), or started by a query and left running until it
    is idle (`on_demand` True: it takes the writer lock only to write back, like a query)."""

    def __init__(
        self, db_dir, status=None, device: str | None = None, weights: str | None = None, on_demand: bool = False
    ):
        self.db_dir = db_dir
        self.on_write = None  # called after each write-back (`recall watch`: compact on the bound)
        self.on_idle = None  # called with the seconds since the last request while none comes (ondemand.py)
        self.path = socket_path(db_dir)
        self.status = status or (lambda: {})
        self.device, self.weights = device, weights
        self.on_demand = on_demand
        self.queries = 0
        self.started = time.time()
        self.last_request = time.monotonic()
        self.stop_requested = threading.Event()
        self._searcher, self._sock, self._thread, self._closing = None, None, None, False
        self._inode, self._lock = None, None
        self.writes_since_compaction, self.idle_compactions = 0, 0
        self.last_compaction = time.monotonic()
        # held while a request is answered and written back: `recall watch` compacts under it, so
        # that no query of this process reads the versions a compaction removes
        self.busy = threading.Lock()

    def start(self) -> None:
        """Take the server lock (an on-demand server that holds it is asked to hand over to a
        watcher; another on-demand start gives up: ServerRunning), then listen."""
        self._lock = self._take_lock()
        try:
            os.unlink(self.path)  # a socket left by a killed server (we hold the server lock)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address, fd = _address(self.path)
        try:
            sock.bind(address)
        finally:
            if fd is not None:
                os.close(fd)
        os.chmod(self.path, 0o600)
        self._inode = os.stat(self.path).st_ino
        sock.listen(16)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="recall-query-server", daemon=True)
        self._thread.start()

    def _take_lock(self):
        import fcntl

        handle = open(os.path.join(os.fspath(self.db_dir), SERVER_LOCK), "a+")  # noqa: SIM115 - held open: it is the lock
        deadline = time.monotonic() + TAKEOVER_WAIT_S
        asked = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return handle
            except BlockingIOError:
                if self.on_demand or time.monotonic() > deadline:
                    handle.close()
                    raise ServerRunning(f"a query server is already running for {self.db_dir}") from None
                if not asked:  # a watcher takes over from an on-demand server
                    request(self.db_dir, {"op": "stop"}, timeout=TAKEOVER_WAIT_S)
                    asked = True
                time.sleep(0.05)

    def request_waiting(self) -> bool:
        """A client is waiting to be answered: idle work stops for it."""
        from select import select  # here: the client half of this module loads only socket, json, os

        return self._sock is not None and bool(select([self._sock], [], [], 0)[0])

    def socket_is_ours(self) -> bool:
        """False once the socket was removed or replaced (the index deleted or rebuilt)."""
        try:
            return os.stat(self.path).st_ino == self._inode
        except OSError:
            return False

    def warm_up(self) -> None:
        """Load the model, open the table and run one search now (it reads the full-text indexes
        and the vectors into memory), so that the first real query is warm too."""
        try:
            searcher = self.searcher()
            searcher.search(["warm-up"], QueryOptions(limit=1, refine="off"))
            if searcher.store.count("refined = false"):  # queries will refine: load the encoder now
                searcher.model  # noqa: B018
        except Exception:  # empty index: built on the first query instead
            pass

    def close(self) -> None:
        self._closing = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError:
            pass
        if self._lock is not None:
            self._lock.close()  # releases the server lock
            self._lock = None

    def searcher(self):
        if self._searcher is None:
            from recall_cli.query.search import Searcher

            self._searcher = Searcher(self.db_dir, device=self.device, weights=self.weights)
            self._searcher.writes_locked = not self.on_demand  # a watcher holds the writer lock
        return self._searcher

    def _serve(self) -> None:
        while not self._closing:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                if self.on_demand and self.compaction_due():
                    self.compact()
                elif self.on_idle is not None:
                    self.on_idle(time.monotonic() - self.last_request)
                continue
            except OSError:
                if self._closing:
                    return
                continue
            with conn:
                try:
                    self._handle(conn)
                except Exception:  # a bad client never stops the server
                    pass

    def _handle(self, conn) -> None:
        conn.settimeout(10)
        data = b""  # read (at most the limit) before any reply: unread data would reset the connection
        while not data.endswith(b"\n") and len(data) <= MAX_REQUEST_BYTES:
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            data += chunk
        uid = peer_uid(conn)
        if uid is not None and uid != os.getuid():
            self._reply(conn, {"ok": False, "error": "refused: this query server answers its owner only", "exit": 2})
            return
        self.last_request = time.monotonic()
        if len(data) > MAX_REQUEST_BYTES:
            self._reply(conn, {"ok": False, "error": "request too large", "exit": 2})
            return
        try:
            payload = json.loads(data)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            self._reply(conn, {"ok": False, "error": "bad request: not a JSON object", "exit": 2})
            return
        with self.busy:
            self._reply(conn, self.answer(payload))
            conn.close()  # the client has its answer; now write back what the query refined
            before = self._searcher.compactions if self._searcher is not None else 0
            if self._searcher is not None and self._searcher.write_back():  # compacts on the bound
                done = self._searcher.compactions > before  # then nothing is left for the idle compaction
                self.writes_since_compaction = 0 if done else self.writes_since_compaction + 1
                if self.on_write is not None:
                    self.on_write()
        self.last_request = time.monotonic()  # idle time counts from the end of the work

    @property
    def compactions(self) -> int:
        """Compactions by this server: when idle, and by its write-backs on the growth bound."""
        return self.idle_compactions + (self._searcher.compactions if self._searcher is not None else 0)

    def compaction_due(self) -> bool:
        quiet, since_last = time.monotonic() - self.last_request, time.monotonic() - self.last_compaction
        return self.writes_since_compaction > 0 and quiet >= COMPACT_WHEN_IDLE_S and since_last >= COMPACT_EVERY_S

    def compact(self) -> bool:
        """Compact the table under the writer lock, if nobody else is writing (then next time)."""
        from recall_cli.errors import RecallError
        from recall_cli.storage.growth import BOUND_KEEP_VERSIONS_S
        from recall_cli.storage.lock import WriterLock

        self.last_compaction = time.monotonic()
        try:
            with WriterLock(self.db_dir, "query server (compacting)"):
                self.searcher().store.maintain(keep_versions_s=BOUND_KEEP_VERSIONS_S)
        except RecallError:  # another writer: it compacts, or we do next time
            return False
        self.writes_since_compaction = 0
        self.idle_compactions += 1
        return True

    @staticmethod
    def _reply(conn, reply: dict) -> None:
        # ASCII escapes: file names that are not UTF-8 travel as lone surrogates, restored by json.loads
        conn.sendall(json.dumps(dict(reply, protocol=PROTOCOL)).encode())

    def server_status(self) -> dict:
        return {
            "pid": os.getpid(),
            "index": os.fspath(self.db_dir),
            "kind": "on-demand" if self.on_demand else "recall watch",
            "uptime_s": round(time.time() - self.started, 1),
            "queries": self.queries,
            "memory_mib": round(_rss_mib(), 1),
        }

    def answer(self, payload: dict) -> dict:
        from recall_cli.errors import RecallError

        if payload.get("protocol") != PROTOCOL or payload.get("version") not in (None, _version()):
            return {"ok": False, "mismatch": True, "error": "protocol or version mismatch"}
        if payload.get("op") == "status":
            return {"ok": True, "status": {**self.status(), "server": self.server_status()}}
        if payload.get("op") == "stop":
            if not self.on_demand:
                return {"ok": False, "error": "this server stops with its `recall watch`", "exit": 2}
            self.stop_requested.set()
            return {"ok": True}
        if payload.get("op") != "query":
            return {"ok": False, "error": f"unknown op {payload.get('op')!r}", "exit": 2}
        try:
            options = QueryOptions.from_request(payload)
        except ValueError as error:
            return {"ok": False, "error": f"bad request: {error}", "exit": 2}
        try:
            searcher = self.searcher()
            searcher.store.table.checkout_latest()  # see what the watcher wrote since
            results = searcher.search(list(payload["texts"]), options)
            self.queries += 1
            return {"ok": True, "results": results}
        except RecallError as error:
            self._searcher = None  # e.g. empty index: try again next time
            return {"ok": False, "error": str(error), "exit": error.exit_code}
        except Exception as error:  # never a crash: the client gets one line
            return {
                "ok": False,
                "error": f"unexpected error in the query server: {type(error).__name__}: "
                f"{(str(error).splitlines() or [''])[0]}",
                "exit": 2,
            }
