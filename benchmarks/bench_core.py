"""Core benchmarks of the full-depth pipeline, driven through the real CLI.

1. Retrieval quality (R@1, R@10, MRR@10) of the full model on the docstring corpus: one document
   per file, queries answered by `recall query - --jsonl` (batch mode).
2. Indexing throughput (files/s, units/s) and peak memory of `recall index`.
3. Query latency: a cold `recall query` process, and per query inside one process (batch mode).
4. Re-indexing an unchanged tree of many files (wall time of the whole process).
5. Flat scan vs ANN index query time by table size (where an ANN index starts to pay).
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

from .common import (
    CORPUS,
    machine_info,
    machine_line,
    markdown_table,
    percentile,
    recall_cmd,
    run_measured,
    write_results,
)


def load_corpus(path: Path = CORPUS) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_corpus_files(rows: list[dict], folder: Path) -> dict[str, str]:
    """One document per file; returns query id -> file path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for row in rows:
        path = folder / f"{row['id']}.txt"
        path.write_text(row["doc"], encoding="utf-8")
        paths[row["id"]] = str(path.resolve())
    return paths


def retrieval_metrics(ranked: dict[str, list[str]], truth: dict[str, str], k: int = 10) -> dict:
    """R@1, R@k and MRR@k of ranked path lists against the one relevant path per query."""
    hits1 = hitsk = reciprocal = 0.0
    for query_id, relevant in truth.items():
        paths = ranked.get(query_id, [])[:k]
        if paths[:1] == [relevant]:
            hits1 += 1
        if relevant in paths:
            hitsk += 1
            reciprocal += 1.0 / (paths.index(relevant) + 1)
    count = len(truth)
    return {"R@1": hits1 / count, f"R@{k}": hitsk / count, f"MRR@{k}": reciprocal / count, "queries": count}


def batch_query(db: Path, queries: list[str], extra: tuple = ()) -> tuple[dict[str, list[str]], dict]:
    """All queries through one `recall query -` process; query text -> ranked paths."""
    measured = run_measured(
        recall_cmd("query", "-", "--db", db, "--jsonl", "-n", 10, *extra), stdin="\n".join(queries) + "\n"
    )
    ranked: dict[str, list[str]] = {}
    for line in measured["stdout"].splitlines():
        result = json.loads(line)
        ranked.setdefault(result["query"], []).append(result["path"])
    return ranked, measured


def quality_and_throughput(work: Path, rows: list[dict]) -> dict:
    paths = write_corpus_files(rows, work / "docs")
    db = work / "db-full"
    indexed = run_measured(recall_cmd("index", work / "docs", "--db", db, "--json"))
    summary = json.loads(indexed["stdout"])
    queries = [row["query"] for row in rows]
    ranked_by_text, batch = batch_query(db, queries)
    ranked = {row["id"]: ranked_by_text.get(row["query"], []) for row in rows}
    truth = {row["id"]: paths[row["id"]] for row in rows}
    return {
        "db": str(db),
        "files": len(rows),
        "units": summary["units_encoded"],
        "index_seconds": indexed["wall"],
        "files_per_s": len(rows) / indexed["wall"],
        "units_per_s": summary["units_encoded"] / indexed["wall"],
        "index_peak_mib": indexed["peak_mib"],
        "quality": retrieval_metrics(ranked, truth),
        "batch_process_seconds": batch["wall"],
        "batch_peak_mib": batch["peak_mib"],
    }


def query_latency(db: Path, queries: list[str], cold_runs: int) -> dict:
    cold = []
    for text in queries[:cold_runs]:
        measured = run_measured(
            recall_cmd("query", text, "--db", db, "--json", "-n", 10), env={"RECALL_NO_SERVER": "1"}
        )  # cold: never a running watcher
        assert measured["rc"] == 0, measured["stderr"]
        cold.append(measured["wall"])
    from recall_cli.query.options import QueryOptions
    from recall_cli.query.search import Searcher

    searcher = Searcher(db)
    searcher.search(["warm-up"], QueryOptions())
    in_process = []
    for text in queries:
        start = time.perf_counter()
        searcher.search([text], QueryOptions())
        in_process.append(time.perf_counter() - start)
    return {
        "cold_p50_s": percentile(cold, 0.5),
        "cold_p95_s": percentile(cold, 0.95),
        "cold_runs": len(cold),
        "batch_p50_ms": 1000 * percentile(in_process, 0.5),
        "batch_p95_ms": 1000 * percentile(in_process, 0.95),
        "batch_queries": len(in_process),
    }


def unchanged_reindex(work: Path, files: int) -> dict:
    """Index a tree of `files` small notes, then time re-indexing it unchanged (3 runs)."""
    root = work / "many"
    rng = random.Random(0)
    words = [
        "photo",
        "note",
        "trip",
        "recipe",
        "budget",
        "garden",
        "music",
        "lake",
        "city",
        "train",
        "meeting",
        "family",
    ]
    for index in range(files):
        folder = root / f"d{index // 500:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"n{index:05d}.md").write_text(" ".join(rng.choices(words, k=12)))
    db = work / "db-many"
    first = run_measured(recall_cmd("index", root, "--db", db, "-q"))
    again = [run_measured(recall_cmd("index", root, "--db", db, "--json")) for _ in range(3)]
    summaries = [json.loads(run["stdout"]) for run in again]
    assert all(summary["unchanged"] == files for summary in summaries), summaries[0]
    walls = sorted(run["wall"] for run in again)
    return {
        "files": files,
        "first_index_s": first["wall"],
        "unchanged_runs_s": walls,
        "unchanged_median_s": walls[1],
        "unchanged_peak_mib": max(run["peak_mib"] for run in again),
    }


def ann_crossover(sizes: list[int], dim: int = 384, queries: int = 30) -> list[dict]:
    """Query time of a flat scan vs an IVF_HNSW_SQ index on random unit vectors, by table size."""
    import lancedb
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        db = lancedb.connect(folder)
        for size in sizes:
            vectors = rng.standard_normal((size, dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            table = db.create_table(
                f"t{size}",
                pa.table(
                    {
                        "id": pa.array(np.arange(size)),
                        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
                    }
                ),
            )
            probes = vectors[rng.choice(size, queries, replace=False)]

            def timed(table, probes) -> float:
                start = time.perf_counter()
                for probe in probes:
                    table.search(probe).distance_type("dot").limit(40).to_arrow()
                return 1000 * (time.perf_counter() - start) / queries

            timed(table, probes)
            flat_ms = timed(table, probes)
            start = time.perf_counter()
            table.create_index(metric="dot", vector_column_name="vector", index_type="IVF_HNSW_SQ")
            build_s = time.perf_counter() - start
            timed(table, probes)
            ann_ms = timed(table, probes)
            rows.append({"rows": size, "flat_ms": flat_ms, "ann_ms": ann_ms, "build_s": build_s})
    return rows


def main(quick: bool = False) -> str:
    info = machine_info()
    rows = load_corpus()
    if quick:
        rows = rows[:300]
    reindex_files = 2_000 if quick else 10_000
    with tempfile.TemporaryDirectory(prefix="recall-bench-") as folder:
        work = Path(folder)
        core = quality_and_throughput(work, rows)
        latency = query_latency(Path(core["db"]), [row["query"] for row in rows][:200], 5 if quick else 10)
        reindex = unchanged_reindex(work, reindex_files)
    ann = ann_crossover([10_000, 50_000] if quick else [10_000, 50_000, 100_000, 200_000])
    data = {
        "machine": info,
        "corpus": str(CORPUS),
        "full_depth": core,
        "latency": latency,
        "unchanged_reindex": reindex,
        "ann": ann,
    }
    quality = core["quality"]
    markdown = "\n\n".join(
        [
            "## Core (full depth, minilm)",
            f"Machine: {machine_line(info)}. Command: `python -m benchmarks.run --only core"
            + (" --quick" if quick else "")
            + "`.",
            markdown_table(
                ["corpus", "queries", "R@1", "R@10", "MRR@10"],
                [["docstrings", quality["queries"], quality["R@1"], quality["R@10"], quality["MRR@10"]]],
            ),
            markdown_table(
                ["files", "units", "index s", "files/s", "units/s", "peak MiB"],
                [
                    [
                        core["files"],
                        core["units"],
                        core["index_seconds"],
                        core["files_per_s"],
                        core["units_per_s"],
                        core["index_peak_mib"],
                    ]
                ],
            ),
            markdown_table(
                ["cold query p50 s", "cold p95 s", "batch p50 ms", "batch p95 ms"],
                [[latency["cold_p50_s"], latency["cold_p95_s"], latency["batch_p50_ms"], latency["batch_p95_ms"]]],
            ),
            markdown_table(
                ["unchanged tree files", "first index s", "unchanged re-index s (median of 3)", "peak MiB"],
                [
                    [
                        reindex["files"],
                        reindex["first_index_s"],
                        reindex["unchanged_median_s"],
                        reindex["unchanged_peak_mib"],
                    ]
                ],
            ),
            "Flat scan vs IVF_HNSW_SQ (384-d, top 40):",
            markdown_table(
                ["rows", "flat ms/query", "ANN ms/query", "index build s"],
                [[r["rows"], r["flat_ms"], r["ann_ms"], r["build_s"]] for r in ann],
            ),
        ]
    )
    write_results("core", data, markdown)
    return markdown


if __name__ == "__main__":
    import sys

    print(main(quick="--quick" in sys.argv))
