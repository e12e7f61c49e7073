"""Issue 8, security: hostile file names and contents make recall run nothing, reach no network and
write nowhere but its index; terminal output cannot be driven by what a file holds."""

from __future__ import annotations

import http.server
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from badfiles import image_bytes, write_video
from conftest import REPO, write_files

from recall_cli.cli.output import write_results
from recall_cli.models.base import DecodeError
from recall_cli.models.imagebind.media import audio, video

# Runs recall under a Python audit hook that logs every process start, network use and file opened
# for writing.  (Native code that bypasses Python is covered by the before/after tree snapshots.)
AUDITED_RECALL = r"""
import os, socket, sys
LOG = open(os.environ["AUDIT_LOG"], "a", buffering=1)
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
SPAWN = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
         "os.forkpty", "pty.spawn", "os.startfile")
NET = ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "urllib.Request",
       "http.client.connect", "socket.sendto")

def hook(event, args):
    if event in SPAWN or event in NET:
        LOG.write(f"{event} {args!r}\n")
    elif event == "socket.connect":
        sock, address = args[0], args[1]
        if sock.family != socket.AF_UNIX:
            LOG.write(f"{event} {address!r}\n")
    elif event == "open":
        path, mode, flags = args
        writes = any(c in (mode or "") for c in "wax+") or (mode is None and flags & WRITE_FLAGS)
        if writes and isinstance(path, (str, bytes)):
            LOG.write(f"write {os.fsdecode(os.path.abspath(path))}\n")

sys.addaudithook(hook)
sys.argv = ["recall", *sys.argv[1:]]
from recall_cli.__main__ import main
main()
"""


class Listener:
    """A local HTTP server that counts every request: any hit means something reached out."""

    def __init__(self):
        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                self.send_response(404)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


def hostile_corpus(root: Path, url: str) -> None:
    from pypdf import PdfWriter
    from pypdf.generic import DictionaryObject, NameObject, TextStringObject

    write_files(
        root,
        {
            "$(touch PWNED-subst).txt": "command substitution in a file name",
            "`touch PWNED-backtick`.md": "backticks in a file name",
            "; rm -rf ~; touch PWNED-semicolon.txt": "a shell command in a file name",
            "[bold red]markup[/] name.txt": "rich markup in a file name",
            "script.sh": "#!/bin/sh\ntouch PWNED-script\ncurl " + url + "/script\n",
            "page.html": f"<html><head><link rel=stylesheet href='{url}/css'><script src='{url}/js'></script>"
            f"<script>fetch('{url}/fetch')</script></head><body><img src='{url}/img'>"
            f"<iframe src='{url}/frame'></iframe>a page with remote references</body></html>",
            "drawing.svg": f"<svg xmlns='http://www.w3.org/2000/svg'><image href='{url}/svg'/></svg>",
            "playlist.mp4": f"#EXTM3U\n#EXTINF:10,\n{url}/segment.ts\n#EXT-X-ENDLIST\n",
            "concat.mkv": f"ffconcat version 1.0\nfile {url}/concat.mp4\nfile /etc/hostname\n",
            "escape.txt": "terminal escapes \x1b]0;owned title\x07 \x1b[2J\x1b[31m red \x1b[0m in a note",
            ".recallignore": "../../**\n/etc/*\n",
        },
    )
    (root / "photo.jpg").write_bytes(image_bytes("JPEG"))
    write_video(root / "clip.mp4")
    writer = PdfWriter()
    writer.add_blank_page(200, 200)
    writer._root_object[NameObject("/OpenAction")] = DictionaryObject(
        {
            NameObject("/S"): NameObject("/JavaScript"),
            NameObject("/JS"): TextStringObject(f"app.launchURL('{url}/pdf-js', true);"),
            NameObject("/Next"): DictionaryObject(
                {NameObject("/S"): NameObject("/URI"), NameObject("/URI"): TextStringObject(f"{url}/pdf-open")}
            ),
        }
    )
    with open(root / "actions.pdf", "wb") as handle:
        writer.write(handle)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(folder)): (path.lstat().st_size, path.lstat().st_mtime_ns) for path in folder.rglob("*")
    }


def audited(*args, workdir: Path, home: Path, log: Path) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        AUDIT_LOG=str(log),
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_DATA_HOME=str(home / ".local/share"),
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONPATH=str(REPO),
        RECALL_DEVICE="cpu",
    )
    return subprocess.run(
        [sys.executable, "-c", AUDITED_RECALL, *map(str, args)], cwd=workdir, env=env, capture_output=True, timeout=300
    )


def test_hostile_files_run_nothing_reach_nothing_and_write_only_the_index(tmp_path, listener):
    root, db, home, workdir = (tmp_path / name for name in ("files", "db", "home", "cwd"))
    for folder in (home, workdir):
        folder.mkdir()
    hostile_corpus(root, listener.url)
    before = snapshot(root)
    log = tmp_path / "audit.log"

    indexed = audited(
        "index", root, "--db", db, "--model", "imagebind-test", "--json", workdir=workdir, home=home, log=log
    )
    assert indexed.returncode in (0, 3), indexed.stderr
    assert b"Traceback" not in indexed.stderr
    for query in ("remote references", "rm -rf", "markup"):
        answered = audited("query", query, "--db", db, "--json", workdir=workdir, home=home, log=log)
        assert answered.returncode == 0, answered.stderr

    assert listener.hits == []  # nothing fetched a URL found in a file
    events = log.read_text().splitlines()
    assert not [event for event in events if not event.startswith("write ")], events  # no exec, no network
    writes = {event[len("write ") :] for event in events if event.startswith("write ")}
    assert str(db / "write.lock") in writes  # the hook does see recall's own writes
    outside = [path for path in writes if not path.startswith(str(db) + os.sep)]
    assert outside == [], outside
    assert snapshot(root) == before  # the indexed folder is only read
    assert list(workdir.iterdir()) == [] and not list(tmp_path.rglob("PWNED*"))
    summary = json.loads(indexed.stdout)
    assert summary["added"] >= 8  # the hostile files were really read and embedded


def test_decoders_never_open_urls_or_other_files(tmp_path, listener):
    """Handed a playlist or concat script directly (the sniffer never would), ffmpeg is limited
    to container demuxers on the local file."""
    (tmp_path / "list.m3u8").write_text(f"#EXTM3U\n#EXTINF:10,\n{listener.url}/seg.ts\n#EXT-X-ENDLIST\n")
    (tmp_path / "list.ffconcat").write_text(f"ffconcat version 1.0\nfile {listener.url}/a.mp4\n")
    for name in ("list.m3u8", "list.ffconcat"):
        for load in (video.load_video, audio.load_audio):
            with pytest.raises(DecodeError):
                load(tmp_path / name)
    assert listener.hits == []


def test_terminal_output_shows_hostile_names_and_snippets_inert():
    results = [
        {
            "query": "[red]q",
            "rank": 1,
            "score": 0.5,
            "modality": "text",
            "chunk": 0,
            "refined": True,
            "path": "/notes/[bold]x[/] \x1b[2J.txt",
            "snippet": "a [/] \x1b]0;title\x07 note",
        },
        {
            "query": "[red]q",
            "rank": 2,
            "score": 0.4,
            "modality": "text",
            "chunk": 0,
            "refined": True,
            "path": "/notes/two\nlines.txt",
            "snippet": "ok",
        },
    ]
    for fmt in ("table", "tsv"):
        out = io.StringIO()
        write_results([results, results], fmt, out)
        text = out.getvalue()
        assert "\x1b" not in text and "\x07" not in text, (fmt, text)
        assert "[bold]x[/]" in text and "two\\nlines.txt" in text  # shown literally, on one line
