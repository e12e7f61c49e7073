"""The on-demand query server: `recall query` in a shell loop, each query a new process.

On the first 300 docstrings (minilm, full depth): 20 queries one after another with auto-start on
(the first answers in-process and leaves the server behind, reported on its own; the others go
through the server), against the same 20 with no server at all (every one cold).  The two loops
are alternated (server, cold, server, cold); the server is stopped between rounds so that each
server round starts cold too.

    python -m benchmarks.run --only server [--quick]
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from .bench_core import load_corpus, write_corpus_files
from .common import machine_info, machine_line, markdown_table, percentile, recall_cmd, run_measured, write_results

ON = {"RECALL_SERVER_AUTOSTART": "1"}
OFF = {"RECALL_NO_SERVER": "1"}


def _loop(db: Path, queries: list[str], env: dict, serve: bool) -> list[float]:
    walls = []
    for text in queries:
        measured = run_measured(recall_cmd("query", text, "--db", db, "-n", 10), env=env)
        assert measured["rc"] == 0, measured["stderr"]
        walls.append(measured["wall"])
        if serve and len(walls) == 1:
            _wait_for_server(db)  # the loop's next query would otherwise race the server's start
    return walls


def _wait_for_server(db: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run_measured(recall_cmd("server", "status", "--db", db))["rc"] == 0:
            return
        time.sleep(0.2)
    raise RuntimeError("no query server appeared")


def main(quick: bool = False) -> str:
    info = machine_info()
    load_before = os.getloadavg()[0]
    rows = load_corpus()[:300]
    queries = [row["query"] for row in rows][:20]
    rounds = 1 if quick else 2
    server_first, server_rest, cold = [], [], []
    with tempfile.TemporaryDirectory(prefix="recall-bench-") as folder:
        work = Path(folder)
        write_corpus_files(rows, work / "docs")
        db = work / "db"
        assert run_measured(recall_cmd("index", work / "docs", "--db", db, "--full", "-q"))["rc"] == 0
        for _ in range(rounds):
            walls = _loop(db, queries, ON, serve=True)
            server_first.append(walls[0])
            server_rest += walls[1:]
            run_measured(recall_cmd("server", "stop", "--db", db))
            cold += _loop(db, queries, OFF, serve=False)
    load_after = os.getloadavg()[0]
    data = {
        "machine": info,
        "load_1min": [load_before, load_after],
        "queries_per_round": len(queries),
        "rounds": rounds,
        "server_first_s": server_first,
        "server_walls_s": server_rest,
        "server_p50_s": percentile(server_rest, 0.5),
        "server_p95_s": percentile(server_rest, 0.95),
        "cold_p50_s": percentile(cold, 0.5),
        "cold_p95_s": percentile(cold, 0.95),
    }
    markdown = "\n\n".join(
        [
            "## Query server (minilm, full depth, 300 docstrings)",
            f"Machine: {machine_line(info)}; 1-minute load {load_before:.2f} before, {load_after:.2f} after. "
            "Command: `python -m benchmarks.run --only server" + (" --quick" if quick else "") + "`. "
            f"{len(queries)} queries in a loop of `recall query` processes, {rounds} round(s), "
            "server and cold loops alternated.",
            markdown_table(
                ["loop", "first query s", "p50 s", "p95 s", "queries"],
                [
                    [
                        "with the on-demand server",
                        max(server_first),
                        data["server_p50_s"],
                        data["server_p95_s"],
                        len(server_rest),
                    ],
                    ["no server (every query cold)", "-", data["cold_p50_s"], data["cold_p95_s"], len(cold)],
                ],
            ),
        ]
    )
    write_results("server", data, markdown)
    return markdown


if __name__ == "__main__":
    import sys

    print(main(quick="--quick" in sys.argv))
