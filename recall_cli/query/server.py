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

from recall_cli.query.options import QueryOptions
from recall_cli.storage.layout import SOCKET_NAME

PROTOCOL = 1
NO_SERVER_ENV = "RECALL_NO_SERVER"  # set to 1: never use a running watcher (benchmarks, debugging)
_MAX_UNIX_PATH = 100  # sun_path is 108 bytes on Linux, 104 on macOS


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
    if os.environ.get(NO_SERVER_ENV, "") not in ("", "0"):
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


# --- server side (runs inside `recall watch`) ----------------------------------------------------


class QueryServer:
    """Answers requests one at a time on a background thread, with a Searcher built once (the
    model stays loaded) and refreshed to the table's latest version before every query."""

    def __init__(self, db_dir, status=None, device: str | None = None, weights: str | None = None):
        self.db_dir = db_dir
        self.path = socket_path(db_dir)
        self.status = status or (lambda: {})
        self.device, self.weights = device, weights
        self._searcher = None
        self._sock = None
        self._thread = None
        self._closing = False
        self._inode = None

    def start(self) -> None:
        import threading

        try:
            os.unlink(self.path)  # a socket left by a killed watcher (we hold the writer lock)
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

    def warm_up(self) -> None:
        """Load the model (and open the table) now, so the first query is warm too."""
        try:
            self._get_searcher()
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

    def _get_searcher(self):
        if self._searcher is None:
            from recall_cli.query.search import Searcher

            self._searcher = Searcher(self.db_dir, device=self.device, weights=self.weights)
            self._searcher.writes_locked = True  # the watcher holds the writer lock
        return self._searcher

    def _serve(self) -> None:
        while not self._closing:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
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
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            data += chunk
        try:
            payload = json.loads(data)
        except ValueError:
            return
        reply = self.answer(payload)
        # ASCII escapes: file names that are not UTF-8 travel as lone surrogates, restored by json.loads
        conn.sendall(json.dumps(dict(reply, protocol=PROTOCOL)).encode())
        conn.close()  # the client has its answer; now write back what the query refined
        if self._searcher is not None:
            self._searcher.write_back()

    def answer(self, payload: dict) -> dict:
        from recall_cli.errors import RecallError

        if payload.get("protocol") != PROTOCOL or payload.get("version") not in (None, _version()):
            return {"ok": False, "mismatch": True, "error": "protocol or version mismatch"}
        if payload.get("op") == "status":
            return {"ok": True, "status": self.status()}
        if payload.get("op") != "query":
            return {"ok": False, "error": f"unknown op {payload.get('op')!r}", "exit": 2}
        try:
            options = QueryOptions.from_request(payload)
        except ValueError as error:
            return {"ok": False, "error": f"bad request: {error}", "exit": 2}
        try:
            searcher = self._get_searcher()
            searcher.store.table.checkout_latest()  # see what the watcher wrote since
            return {"ok": True, "results": searcher.search(list(payload["texts"]), options)}
        except RecallError as error:
            self._searcher = None  # e.g. empty index: try again next time
            return {"ok": False, "error": str(error), "exit": error.exit_code}
        except Exception as error:  # never a crash: the client gets one line
            return {
                "ok": False,
                "error": f"unexpected error in the watcher: {type(error).__name__}: "
                f"{(str(error).splitlines() or [''])[0]}",
                "exit": 2,
            }
