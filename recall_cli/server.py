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

PROTOCOL = 1
SOCKET_NAME = "query.sock"
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
    from . import __version__

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


QUERY_EXTRAS = ("like", "since", "until", "min_score", "refine", "budget")


def warm_query(db_dir, texts: list[str], limit: int, offset: int, modality: str | None,
               within: str | None, **extra) -> list[list[dict]] | None:
    """Results from the running watcher, or None (no watcher: load the model here).  `extra`:
    the other query options (QUERY_EXTRAS), forwarded as they are."""
    if os.environ.get(NO_SERVER_ENV, "") not in ("", "0"):
        return None
    if within:
        within = os.path.realpath(os.path.expanduser(within))  # the server's cwd is not ours
    if extra.get("like"):
        extra["like"] = os.path.abspath(os.path.expanduser(extra["like"]))
    reply = request(db_dir, {"op": "query", "texts": texts, "limit": limit, "offset": offset,
                             "modality": modality, "within": within,
                             **{key: extra.get(key) for key in QUERY_EXTRAS}})
    if reply is None:
        return None
    if not reply.get("ok"):
        from .errors import RecallError

        error = RecallError(reply.get("error") or "the watcher could not answer")
        error.exit_code = int(reply.get("exit", 2))
        raise error
    return reply["results"]


# --- `recall query` fast path: answered by a watcher before typer is even imported ------------------

_FLAGS = {"--json": "json", "--jsonl": "jsonl", "-l": "paths", "--files": "paths", "-0": "nul", "--null": "nul",
          "-v": "verbose", "--verbose": "verbose", "--exact": "exact", "--no-refine": "no_refine"}
_VALUES = {"-n": "limit", "--limit": "limit", "--offset": "offset", "-t": "type", "--type": "type",
           "--in": "in", "--db": "db", "--like": "like", "--since": "since", "--until": "until",
           "--min-score": "min_score", "--budget": "budget"}


def _parse_query_argv(argv: list[str]) -> dict | None:
    """The options of `recall query`, parsed the way click would; None for anything else or
    anything unusual (--help, --device, a typo...), which then goes through typer as usual."""
    if not argv or argv[0] != "query":
        return None
    found: dict = {"flags": set(), "text": None}
    args, index, only_positional = argv[1:], 0, False
    while index < len(args):
        arg = args[index]
        index += 1
        if only_positional or arg == "-" or not arg.startswith("-"):
            if found["text"] is not None:
                return None
            found["text"] = arg
        elif arg == "--":
            only_positional = True
        elif arg in _FLAGS:
            found["flags"].add(_FLAGS[arg])
        else:
            name, eq, value = arg.partition("=")
            if not eq and name not in _VALUES and name[:2] in ("-n", "-t") and len(name) > 2:
                name, value, eq = name[:2], name[2:], "="  # -n5
            if name not in _VALUES:
                return None
            if not eq:
                if index >= len(args):
                    return None
                value = args[index]
                index += 1
            found[_VALUES[name]] = value
    if found["text"] is None and found.get("like") is None:
        return None
    if {"exact", "no_refine"} <= found["flags"]:
        return None  # typer says why
    try:
        found["limit"] = int(found.get("limit", 10))
        found["offset"] = int(found.get("offset", 0))
        for key in ("min_score", "budget"):
            if key in found:
                found[key] = float(found[key])
    except ValueError:
        return None
    if found["limit"] < 1 or found["offset"] < 0 or found.get("budget", 0) < 0:
        return None
    return found


def fast_query(argv: list[str]) -> int | None:
    """Run `recall query ...` against a running watcher; None: not possible, use the full CLI."""
    import sys

    parsed = _parse_query_argv(argv)
    if parsed is None or os.environ.get(NO_SERVER_ENV, "") not in ("", "0"):
        return None
    from .paths import resolve_db

    db_dir = resolve_db(parsed.get("db"))
    if not os.path.exists(socket_path(db_dir)):
        return None
    from .errors import RecallError
    from .output import resolve_format, write_results

    flags = parsed["flags"]
    try:
        fmt = resolve_format("json" in flags, "jsonl" in flags, "paths" in flags, "nul" in flags, sys.stdout)
        text = parsed["text"]
        if text is None:
            texts = [""]  # --like alone
        elif text == "-":
            texts = [line.strip() for line in sys.stdin if line.strip()]
        elif not text.strip():
            raise RecallError("empty query; say what to look for")
        else:
            texts = [text]
        extra = {key: parsed.get(key) for key in ("like", "since", "until", "min_score", "budget")}
        extra["refine"] = "exact" if "exact" in flags else "off" if "no_refine" in flags else "auto"
        per_query = warm_query(db_dir, texts, parsed["limit"], parsed["offset"], parsed.get("type"),
                               parsed.get("in"), **extra)
        if per_query is None:
            if text == "-":  # stdin is spent: hand the texts to the full CLI
                sys.stdin = __import__("io").StringIO("\n".join(texts) + "\n")
            return None
        write_results(per_query, fmt)
    except RecallError as error:
        sys.stderr.write(f"recall: {error}\n")
        return error.exit_code
    except BrokenPipeError:  # `recall query ... | head`
        sys.stderr.close()
        return 0
    return 0 if any(per_query) else 1


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
        except Exception:  # noqa: BLE001 - empty index: built on the first query instead
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
            from .search import Searcher

            self._searcher = Searcher(self.db_dir, device=self.device, weights=self.weights)
            self._searcher.writes_locked = True  # the watcher holds the writer lock
        return self._searcher

    def _serve(self) -> None:
        while not self._closing:
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._closing:
                    return
                continue
            with conn:
                try:
                    self._handle(conn)
                except Exception:  # noqa: BLE001 - a bad client never stops the server
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
        from .errors import RecallError

        if payload.get("protocol") != PROTOCOL or payload.get("version") not in (None, _version()):
            return {"ok": False, "mismatch": True, "error": "protocol or version mismatch"}
        if payload.get("op") == "status":
            return {"ok": True, "status": self.status()}
        if payload.get("op") != "query":
            return {"ok": False, "error": f"unknown op {payload.get('op')!r}", "exit": 2}
        try:
            from .search import QueryOptions

            searcher = self._get_searcher()
            searcher.store.table.checkout_latest()  # see what the watcher wrote since
            options = QueryOptions(limit=int(payload.get("limit", 10)), offset=int(payload.get("offset", 0)),
                                   modality=payload.get("modality"), within=payload.get("within"),
                                   **{key: payload[key] for key in QUERY_EXTRAS if payload.get(key) is not None})
            return {"ok": True, "results": searcher.search(list(payload["texts"]), options)}
        except RecallError as error:
            self._searcher = None  # e.g. empty index: try again next time
            return {"ok": False, "error": str(error), "exit": error.exit_code}
        except Exception as error:  # noqa: BLE001
            return {"ok": False, "error": f"unexpected error in the watcher: {type(error).__name__}: "
                                          f"{(str(error).splitlines() or [''])[0]}", "exit": 2}
