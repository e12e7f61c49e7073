"""`recall watch` measured: warm vs cold `recall query`, time from a file landing to it being
searchable (idle and in a burst), CPU of an idle watcher, and events applied per second.

One run, one machine, same index and same queries for warm and cold.  The watcher runs with its
default settings (3 s debounce delay), so landing-to-searchable includes that delay by design.

    python -m benchmarks.bench_watch [--quick]
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import (
    CORPUS,
    REPO,
    machine_info,
    machine_line,
    markdown_table,
    percentile,
    recall_cmd,
    run_measured,
    write_results,
)


def _docs(count: int, skip: int = 0) -> list[dict]:
    docs = []
    with open(CORPUS, encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            if number < skip:
                continue
            docs.append(json.loads(line))
            if len(docs) >= count:
                break
    return docs


def _wait(condition, timeout: float, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("benchmark wait timed out")


def _recorded(db: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{db / 'manifest.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        return {row[0] for row in conn.execute("SELECT path FROM files WHERE status = 'ok'")}
    finally:
        conn.close()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _warm_search(db: Path, text: str, limit: int = 5) -> list[str]:
    from recall_cli.query.options import QueryOptions
    from recall_cli.query.server import warm_query

    results = warm_query(db, [text], QueryOptions(limit=limit)) or [[]]
    return [result["path"] for result in results[0]]


def main(quick: bool = False) -> str:
    info = machine_info()
    n_docs, n_queries, n_landing, n_burst, idle_s = (60, 5, 4, 100, 15) if quick else (300, 10, 10, 500, 60)
    env = dict(os.environ, RECALL_DEVICE="cpu")
    env.pop("RECALL_NO_SERVER", None)
    with tempfile.TemporaryDirectory(prefix="bench-watch-") as tmp:
        base = Path(tmp)
        root, db = base / "files", base / "db"
        root.mkdir()
        docs = _docs(n_docs + n_queries)
        for number, doc in enumerate(docs[:n_docs]):
            (root / f"doc{number:05d}.txt").write_text(doc["doc"], encoding="utf-8")
        queries = [doc["query"] for doc in docs[:n_queries]]
        indexed = run_measured(recall_cmd("index", root, "--db", db, "-q"), env=env)
        assert indexed["rc"] == 0, indexed["stderr"]

        log_path = base / "watch.log"
        with open(log_path, "wb") as log:  # the watcher keeps its own copy of the descriptor
            watcher = subprocess.Popen(
                recall_cmd("watch", root, "--db", db, "--json-log"),
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=REPO,
                env=env,
            )
        try:
            started = time.perf_counter()
            _wait(lambda: b'"event": "watching"' in log_path.read_bytes(), 300, 0.05)
            startup = time.perf_counter() - started

            # 1. warm vs cold recall query: same index, same queries, alternating
            warm, cold, same = [], [], True
            for text in queries:
                hot = run_measured(recall_cmd("query", text, "--db", db, "--json"), env=env)
                frozen = run_measured(
                    recall_cmd("query", text, "--db", db, "--json"), env=dict(env, RECALL_NO_SERVER="1")
                )
                assert hot["rc"] == 0 and frozen["rc"] == 0, (hot["stderr"], frozen["stderr"])
                warm.append(hot["wall"])
                cold.append(frozen["wall"])
                same &= hot["stdout"] == frozen["stdout"]

            # 2. CPU used by the idle watcher
            time.sleep(5)
            cpu_before, wall_before = _cpu_seconds(watcher.pid), time.perf_counter()
            time.sleep(idle_s)
            idle_cpu = _cpu_seconds(watcher.pid) - cpu_before
            idle_wall = time.perf_counter() - wall_before

            # 3. landing -> searchable at idle: a new file, until a warm query returns it
            extra = _docs(n_landing, skip=n_docs + n_queries)
            landing_idle = []
            for number, doc in enumerate(extra):
                path = root / f"landed{number:03d}.txt"
                text = doc["doc"][:600]  # the query is the text itself: it ranks first once indexed
                landed = time.perf_counter()
                path.write_text(text, encoding="utf-8")
                _wait(lambda path=path, text=text: str(path) in _warm_search(db, text, 3), 120, 0.05)
                landing_idle.append(time.perf_counter() - landed)
                time.sleep(1.0)

            # 4. a burst: many small files at once; landing = until its row is committed
            #    (manifest row, written after the LanceDB rows), and events applied per second
            burst_docs = _docs(n_burst, skip=n_docs + n_queries + n_landing)
            log_mark = log_path.stat().st_size
            written: dict[str, float] = {}
            burst_start = time.perf_counter()
            for number, doc in enumerate(burst_docs):
                path = root / "burst" / f"b{number % 10}" / f"burst{number:05d}.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(doc["query"] + "\n" + doc["doc"][:300], encoding="utf-8")
                written[str(path)] = time.perf_counter()
            write_seconds = time.perf_counter() - burst_start
            seen: dict[str, float] = {}
            deadline = time.monotonic() + 600
            while len(seen) < len(written) and time.monotonic() < deadline:
                now = time.perf_counter()
                for path in _recorded(db) & written.keys():
                    seen.setdefault(path, now)
                time.sleep(0.05)
            burst_total = time.perf_counter() - burst_start
            landing_burst = [seen[path] - written[path] for path in seen]
            batches = [
                json.loads(line)
                for line in log_path.read_bytes()[log_mark:].decode().splitlines()
                if line.startswith("{") and '"event": "batch"' in line
            ]
            applied_paths = sum(
                batch["added"] + batch["updated"] + batch["moved"] + batch["removed"] for batch in batches
            )  # files changed in the index
            applied_seconds = sum(batch["seconds"] for batch in batches)
        finally:
            watcher.send_signal(signal.SIGTERM)
            try:
                exit_code = watcher.wait(60)
            except subprocess.TimeoutExpired:
                watcher.kill()
                exit_code = None

    data = {
        "machine": info,
        "quick": quick,
        "docs_indexed": n_docs,
        "watcher_startup_s": startup,
        "query": {
            "queries": n_queries,
            "warm_s": warm,
            "cold_s": cold,
            "identical_output": same,
            "warm_p50": percentile(warm, 0.5),
            "warm_max": max(warm),
            "cold_p50": percentile(cold, 0.5),
            "cold_max": max(cold),
        },
        "idle_cpu": {"seconds_observed": idle_wall, "cpu_seconds": idle_cpu, "cpu_percent": 100 * idle_cpu / idle_wall},
        "landing_idle_s": {
            "samples": landing_idle,
            "p50": percentile(landing_idle, 0.5),
            "p95": percentile(landing_idle, 0.95),
        },
        "burst": {
            "files": n_burst,
            "write_seconds": write_seconds,
            "all_searchable_s": burst_total,
            "landed": len(seen),
            "landing_p50": percentile(landing_burst, 0.5),
            "landing_p95": percentile(landing_burst, 0.95),
            "batches": len(batches),
            "applied_paths": applied_paths,
            "apply_seconds": applied_seconds,
            "events_per_s_apply": applied_paths / applied_seconds if applied_seconds else None,
            "events_per_s_end_to_end": len(seen) / burst_total,
        },
        "watcher_exit_code": exit_code,
        "debounce_delay_s": 3.0,
    }
    q, b = data["query"], data["burst"]
    markdown = "\n".join(
        [
            "# recall watch",
            "",
            f"Machine: {machine_line(info)}. One run ({'quick' if quick else 'full'}); {n_docs} docstring files "
            f"indexed with minilm; watcher with default settings (3 s debounce delay).",
            "",
            "## Warm vs cold `recall query` (process start to last result printed)",
            "",
            markdown_table(
                ["", "p50 (s)", "max (s)"],
                [
                    ["warm (answered by `recall watch` over the socket)", q["warm_p50"], q["warm_max"]],
                    ["cold (RECALL_NO_SERVER=1: loads the model)", q["cold_p50"], q["cold_max"]],
                ],
            ),
            "",
            f"{n_queries} queries, alternating warm/cold; outputs identical: {same}. "
            f"Speed-up at p50: {q['cold_p50'] / q['warm_p50']:.1f}x.",
            "",
            "## Landing to searchable",
            "",
            markdown_table(
                ["situation", "files", "p50 (s)", "p95 (s)"],
                [
                    [
                        "idle (until a warm query returns it)",
                        len(landing_idle),
                        data["landing_idle_s"]["p50"],
                        data["landing_idle_s"]["p95"],
                    ],
                    [
                        f"burst of {n_burst} files (until its rows are committed)",
                        len(seen),
                        b["landing_p50"],
                        b["landing_p95"],
                    ],
                ],
            ),
            "",
            "Both include the 3 s debounce delay (a file is indexed once it has been quiet that long).",
            "",
            "## Idle CPU and burst throughput",
            "",
            markdown_table(
                ["measure", "value"],
                [
                    [f"idle watcher CPU over {idle_wall:.0f} s (CPU s)", idle_cpu],
                    ["idle watcher CPU (%)", data["idle_cpu"]["cpu_percent"]],
                    ["burst: files written in (s)", write_seconds],
                    ["burst: all searchable after (s)", burst_total],
                    ["burst: batches", len(batches)],
                    [
                        "burst: files applied per second (batch apply time only)",
                        b["events_per_s_apply"] or float("nan"),
                    ],
                    ["burst: files per second end to end (incl. debounce)", b["events_per_s_end_to_end"]],
                    ["watcher startup incl. catch-up and model load (s)", startup],
                ],
            ),
        ]
    )
    write_results("watch", data, markdown)
    return markdown


if __name__ == "__main__":
    print(main(quick="--quick" in sys.argv[1:]))
