"""An index of 100,000 files: ANN against exact search, filters, and disk growth under write-backs.

The table has the real schema and shapes (storage/table.py): 384-d minilm vectors, the text side
with its full-text indexes, and real INT4 cache blobs (early_exit/quant.py) of 16-254 tokens on the
rows still waiting for refinement.  The vectors are a cheap stand-in for embedding 100k files:
unit vectors drawn around 2,000 topic centres (clustered like real embeddings, which matters for
an IVF index).  One row per file; 70% text, 20% image, 5% audio, 5% video; 35% of the text rows
exit early (block 2 or 4) with a cache blob, the rest are at full depth.  Paths are 10 folders x 10
subfolders, mtimes spread over five years.

Measured:
* recall@10 of each ANN index (IVF_HNSW_SQ, IVF_PQ) against exact search, on the store's search
  (query vectors drawn like the data), without a filter and with `--type image` (20% of rows),
  `--in` a folder (10%), `--in` a subfolder (1%), `--since` (about 10%);
* warm latency of whole queries (`Searcher.search`: query embedding, every exit group, default
  refinement from the INT4 cache, keyword side, fusion) with each filter, exact scan and ANN
  alternated query by query (A B A B), p50/p95;
* disk growth after N queries through an on-demand query server (each query writes back what it
  refined; the server compacts on its own schedule), against the index's size before.

    python -m benchmarks.bench_scale [--quick] [--rows N] [--queries N] [--writebacks N] [--no-write]

The quick mode (10,000 rows, few queries) is a smoke test; the published figures need the full
run.  On the 2-core VM under a load of 12: generating 100,000 rows took 25 s, building IVF_HNSW_SQ
6 min, a write-back about 0.7 s; on a quiet machine expect a fraction of that (budget ~30 min).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import machine_info, machine_line, markdown_table, percentile, write_results

DIM = 384
TOPICS = 2000
SPREAD = 0.55  # noise around a topic centre (per-vector norm before normalising)
ROOT = "/bench/files"
BATCH = 10_000
VOCABULARY = (
    "kayak lake sunset train timetable berlin munich recipe apple pie cinnamon taxes insurance invoice "
    "holiday photo garden budget report meeting notes project deadline server config python function "
    "class module test invoice receipt music guitar concert video lecture physics chemistry history"
)
MODALITY_SHARE = (("text", 0.70), ("image", 0.20), ("audio", 0.05), ("video", 0.05))
FIVE_YEARS_NS = 5 * 365 * 86400 * 10**9
NOW_NS = 1_780_000_000 * 10**9


def filters() -> dict[str, dict]:
    """Name -> QueryOptions fields of each filter measured."""
    since = time.strftime("%Y-%m-%d", time.gmtime((NOW_NS - FIVE_YEARS_NS // 10) / 1e9))
    return {
        "none": {},
        "--type image": {"modality": "image"},
        "--in folder (10%)": {"within": f"{ROOT}/d3"},
        "--in subfolder (1%)": {"within": f"{ROOT}/d3/s4"},
        f"--since {since}": {"since": since},
    }


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _blobs(rng) -> list[bytes]:
    """Real INT4 cache blobs (the state after block 2 or 4) for a spread of token counts."""
    from recall_cli.early_exit.quant import encode_blob

    return [
        encode_blob([rng.normal(0, 1, (tokens, DIM)).astype(np.float32)], block)
        for tokens in (16, 48, 96, 160, 254)
        for block in (2, 4)
    ]


def generate(db: Path, rows: int, seed: int = 7) -> dict:
    """Write a synthetic index of `rows` files to `db` (table, manifest with exit records)."""
    import pyarrow as pa

    from recall_cli.models.minilm.light import model_version, weights_folder
    from recall_cli.storage.layout import prepare_index_dir
    from recall_cli.storage.manifest import Manifest
    from recall_cli.storage.schema import text_side
    from recall_cli.storage.table import Store

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(0, 1, (TOPICS, DIM)))
    blobs = _blobs(rng)
    prepare_index_dir(db)
    manifest = Manifest(db, create=True)
    manifest.set_meta("model", "minilm")
    manifest.set_meta("model_version", model_version(weights_folder()))
    store = Store(db, dim=DIM)
    names, shares = zip(*MODALITY_SHARE, strict=True)
    words_list = VOCABULARY.split()
    cached_bytes = 0
    for start in range(0, rows, BATCH):
        count = min(BATCH, rows - start)
        topic = rng.integers(0, TOPICS, count)
        vectors = _unit(centres[topic] + SPREAD * rng.normal(0, 1, (count, DIM)).astype(np.float32) / np.sqrt(DIM))
        modality = rng.choice(names, count, p=shares)
        early = (modality == "text") & (rng.random(count) < 0.35)
        batch = []
        exits = []
        for offset in range(count):
            number = start + offset
            ext = {"text": "md", "image": "jpg", "audio": "m4a", "video": "mp4"}[modality[offset]]
            path = f"{ROOT}/d{number % 10}/s{(number // 10) % 10}/file{number}.{ext}"
            words = " ".join(rng.choice(words_list, 12))
            blob = blobs[int(rng.integers(len(blobs)))] if early[offset] else None
            exit_block = (2 if blobs.index(blob) % 2 == 0 else 4) if blob else 6
            cached_bytes += len(blob) if blob else 0
            row = {
                "id": f"{path}\x1f0",
                "path": path,
                "root": ROOT,
                "hash": f"h{number}",
                "chunk": 0,
                "modality": str(modality[offset]),
                "snippet": f"topic {topic[offset]}: {words}",
                "size": 1000 + number,
                "mtime_ns": NOW_NS - int(rng.integers(0, FIVE_YEARS_NS)),
                "model": "minilm",
                "vector": vectors[offset],
                "exit_block": exit_block,
                "depth": 6,
                "refined": blob is None,
                "cache": blob,
                "adapter_version": 0,
                "indexed_at": time.time(),
            }
            batch.append({**row, **text_side(row)})
            exits.append(
                (path, row["modality"], [(exit_block, 6, 1, int(blob is None), int(bool(blob)), len(blob or b""))])
            )
        store.table.add(pa.Table.from_pylist(batch, schema=store.schema))
        with manifest.transaction():
            for path, mod, groups in exits:
                manifest.set_exits(path, mod, groups)
    manifest.close()
    store.table.optimize()  # one compacted table with its full-text indexes up to date
    return {"rows": rows, "seconds": time.perf_counter() - started, "cache_bytes": cached_bytes, "centres": centres}


def query_vectors(centres: np.ndarray, count: int, seed: int = 11) -> np.ndarray:
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, len(centres), count)
    return _unit(centres[topic] + SPREAD * rng.normal(0, 1, (count, DIM)).astype(np.float32) / np.sqrt(DIM))


def recall_at_10(store, vectors: np.ndarray) -> dict[str, float]:
    """Per filter: mean share of the exact top 10 (by id) that the ANN search returns."""
    from recall_cli.query.options import QueryOptions
    from recall_cli.query.search import build_filter

    out = {}
    for name, fields in filters().items():
        where = build_filter(QueryOptions(**fields))
        hits = []
        for vector in vectors:
            store.exact_search = True
            exact = {row["id"] for row in store.search(vector, 10, where, extra=("id",))}
            store.exact_search = False
            found = {row["id"] for row in store.search(vector, 10, where, extra=("id",))}
            hits.append(len(exact & found) / max(len(exact), 1))
        out[name] = float(np.mean(hits))
    return out


def latency(searcher, texts: list[str], arms: dict[str, bool]) -> dict:
    """(filter, arm) -> wall seconds of whole queries; arms alternated query by query."""
    from recall_cli.query.options import QueryOptions

    walls: dict = {}
    searcher.search(["warm-up"], QueryOptions(limit=10))  # model, table and indexes in memory
    searcher.refiner and searcher.refiner.fine.clear()  # nothing written: every arm refines alike
    for name, fields in filters().items():
        for text in texts:
            for arm, exact in arms.items():
                searcher.store.exact_search = exact
                started = time.perf_counter()
                searcher.search([text], QueryOptions(limit=10, **fields))
                walls.setdefault((name, arm), []).append(time.perf_counter() - started)
                if searcher.refiner:
                    searcher.refiner.fine.clear()
    searcher.store.exact_search = False
    return walls


def disk_growth(db: Path, texts: list[str], count: int) -> dict:
    """`count` queries through an in-process on-demand server (write-backs and its compaction)."""
    from datetime import timedelta

    from recall_cli.query.options import QueryOptions
    from recall_cli.query.server import QueryServer, warm_query
    from recall_cli.storage.layout import directory_bytes
    from recall_cli.storage.table import Store

    # start from a clean table: no versions left by generating it and building its indexes
    Store(db).table.optimize(cleanup_older_than=timedelta(0), delete_unverified=True)
    before = directory_bytes(db)
    server = QueryServer(db, on_demand=True)
    server.start()
    try:
        server.warm_up()
        for number in range(count):
            text = f"{texts[number % len(texts)]} {number}"  # new words: new candidates to refine
            assert warm_query(db, [text], QueryOptions(limit=10)) is not None
        rows_refined = server._get_searcher().store.count("refined = false")
        compactions = server.compactions
    finally:
        server.close()
    after = directory_bytes(db)
    return {
        "queries": count,
        "before": before,
        "after": after,
        "growth": after / before - 1.0,
        "still_waiting": rows_refined,
        "compactions": compactions,
    }


def main(
    quick: bool = False,
    rows: int | None = None,
    queries: int | None = None,
    writebacks: int | None = None,
    write: bool = True,
) -> str:
    from recall_cli.query.search import Searcher
    from recall_cli.storage.table import Store

    rows = rows or (10_000 if quick else 100_000)
    queries = queries or (5 if quick else 20)
    writebacks = writebacks if writebacks is not None else (50 if quick else 1000)
    info = machine_info()
    load_before = os.getloadavg()[0]
    texts = ["kayak on the lake", "apple pie recipe", "tax invoice", "python server config", "guitar concert"]
    texts = (texts * ((queries // len(texts)) + 1))[:queries]
    report: dict = {"machine": info, "rows": rows, "queries": queries}
    with tempfile.TemporaryDirectory(prefix="recall-scale-") as folder:
        db = Path(folder) / "db"
        made = generate(db, rows)
        centres = made.pop("centres")
        report["generate"] = made
        store = Store(db)
        report["disk_bytes_flat"] = store.disk_bytes()
        vectors = query_vectors(centres, 50 if not quick else 10)
        searcher = Searcher(db)
        report["recall_at_10"], report["index_seconds"], report["latency"] = {}, {}, {}
        for kind in ("IVF_PQ", "IVF_HNSW_SQ"):  # the one `maintain` builds last, kept for the rest
            started = time.perf_counter()
            store.create_vector_index(kind)
            report["index_seconds"][kind] = time.perf_counter() - started
            store._vector_index = None
            report["recall_at_10"][kind] = recall_at_10(store, vectors)
            searcher.store = Store(db)
            walls = latency(searcher, texts, {"exact": True, kind: False})
            report["latency"][kind] = {
                f"{name} | {arm}": {"p50": percentile(values, 0.5), "p95": percentile(values, 0.95), "n": len(values)}
                for (name, arm), values in walls.items()
            }
        report["disk"] = disk_growth(db, texts, writebacks)
    report["load_1min"] = [load_before, os.getloadavg()[0]]
    markdown = _markdown(report, quick)
    if write and not quick:
        write_results("scale", report, markdown)
    return markdown


def _markdown(report: dict, quick: bool) -> str:
    recall_rows = [
        [kind, *(f"{value:.3f}" for value in per_filter.values())]
        for kind, per_filter in report["recall_at_10"].items()
    ]
    filter_names = list(next(iter(report["recall_at_10"].values())))
    latency_rows = []
    for kind, cells in report["latency"].items():
        for key, cell in cells.items():
            name, arm = key.split(" | ")
            if arm == "exact" and kind != "IVF_HNSW_SQ":
                continue
            latency_rows.append([name, arm, f"{cell['p50']:.3f}", f"{cell['p95']:.3f}", cell["n"]])
    disk = report["disk"]
    generate_line = (
        f"{report['rows']:,} rows generated in {report['generate']['seconds']:.0f} s "
        f"({report['generate']['cache_bytes'] / 2**20:.0f} MiB of INT4 cache); vector index built in "
        + ", ".join(f"{kind} {seconds:.0f} s" for kind, seconds in report["index_seconds"].items())
    )
    return "\n\n".join(
        [
            f"## Scale ({report['rows']:,} files, minilm shapes, synthetic vectors)",
            f"Machine: {machine_line(report['machine'])}; 1-minute load {report['load_1min'][0]:.2f} before, "
            f"{report['load_1min'][1]:.2f} after. "
            f"Command: `python -m benchmarks.bench_scale{' --quick' if quick else ''}`. " + generate_line + ".",
            "Recall@10 of the ANN index against exact search (store search, the same filter on both):",
            markdown_table(["index", *filter_names], recall_rows),
            f"Warm whole queries (embedding, exit groups, default refinement, keyword side), "
            f"{report['queries']} per filter and arm, arms alternated:",
            markdown_table(["filter", "search", "p50 s", "p95 s", "queries"], latency_rows),
            f"Disk after {disk['queries']:,} queries with write-backs through an on-demand server "
            f"({disk['compactions']} compactions by the server): "
            f"{disk['before'] / 2**20:.1f} MiB before, {disk['after'] / 2**20:.1f} MiB after "
            f"({100 * disk['growth']:+.1f}%); rows still waiting for refinement: {disk['still_waiting']:,}.",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--queries", type=int)
    parser.add_argument("--writebacks", type=int)
    parser.add_argument("--no-write", action="store_true", help="print only, leave benchmarks/results alone")
    args = parser.parse_args()
    print(main(args.quick, args.rows, args.queries, args.writebacks, write=not args.no_write))
