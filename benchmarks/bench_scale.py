"""An index of 100,000 files: warm whole-query latency with filters, ANN recall@10 against exact
search, and disk growth under a loop of queries that write back.

The table has the real schema and shapes (storage/table.py): 384-d minilm vectors, the text side
with its full-text indexes, and real INT4 cache blobs (early_exit/quant.py) of 16-254 tokens on the
rows still waiting for refinement.  The vectors are a cheap stand-in for embedding 100k files:
unit vectors drawn around 2,000 topic centres (clustered like real embeddings, which matters for
an IVF index).  One row per file; 70% text, 20% image, 5% audio, 5% video; 35% of the text rows
exit early (block 2 or 4) with a cache blob, the rest are at full depth.  Paths are 10 folders x 10
subfolders, mtimes spread over five years.  After generating, `Store.maintain` runs as after
`recall index`: it builds the IVF_HNSW_SQ index (from ANN_MIN_ROWS rows on) and the key indexes.

Measured, in this order:
* the machine's load, before anything else (timings from a busy machine are marked and not written);
* recall@10 of the ANN index against exact search, on the store's search (query vectors drawn like
  the data), without a filter and with `--type image` (20% of rows), `--in` a folder (10%), `--in` a
  subfolder (1%), `--since` (about 10%); IVF_PQ too with --ivf-pq (it reached only 0.54 at 10k);
* warm latency of whole queries (`Searcher.search`: query embedding, every exit group, default
  refinement from the INT4 cache, keyword side, fusion) with each filter, the store's default
  search (what a user gets) and an exact scan alternated query by query (A B A B), p50/p95;
* disk growth over N queries through an on-demand query server, on a copy of the index: each query
  writes back what it refined, and the write-back compacts on the growth bound
  (storage/growth.py).  The table's bytes are read after every write-back (the peak a user can
  find on disk between queries) and every 0.1 s by a sampling thread (the peak inside a
  compaction, which writes the new files before it removes the old).

    python -m benchmarks.bench_scale [--quick] [--rows N] [--queries N] [--writebacks N]
                                     [--reuse DIR] [--ivf-pq] [--profile] [--no-write]

--reuse DIR keeps the generated index in DIR and uses it again next time (the growth phase works
on a copy, so DIR stays as generated).  --profile prints where a warm default query spends its
time (cProfile).  The quick mode (10,000 rows, few queries) is a smoke test; the published
figures need the full run: on a quiet 2-core machine about 15 minutes (generating 1-2 min, the
vector index 2-4 min, recall and latency 2 min, 1,000 queries with write-backs 5-7 min).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .common import load_check, machine_info, machine_line, markdown_table, percentile, write_results

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
    centres = topic_centres(rng)
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
    store.maintain()  # as after `recall index`: compacted, the ANN and key indexes from ANN_MIN_ROWS on
    if not store.has_vector_index:  # a quick run's table is too small for one: build it to compare
        store.create_vector_index()
    return {"rows": rows, "seconds": time.perf_counter() - started, "cache_bytes": cached_bytes}


def topic_centres(rng) -> np.ndarray:
    """The first draw of generate's generator: a reused index gets its query vectors back."""
    return _unit(rng.normal(0, 1, (TOPICS, DIM)))


def query_vectors(centres: np.ndarray, count: int, seed: int = 11) -> np.ndarray:
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, len(centres), count)
    return _unit(centres[topic] + SPREAD * rng.normal(0, 1, (count, DIM)).astype(np.float32) / np.sqrt(DIM))


def recall_at_10(store, vectors: np.ndarray) -> dict[str, float]:
    """Per filter: mean share of the exact top 10 (by id) that the store's default search returns
    (through the ANN index, or exact where the filter is selective: FLAT_MAX_ROWS)."""
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


ARMS = {"default": False, "exact": True}  # arm -> Store.exact_search


def latency(searcher, texts: list[str], profile: bool = False) -> tuple[dict, dict]:
    """(filter, arm) -> wall seconds, and CPU seconds, of whole queries; arms alternated query by query."""
    from recall_cli.query.options import QueryOptions

    walls: dict = {}
    cpus: dict = {}  # CPU seconds of the whole process (every thread): less sensitive to other load
    searcher.search(["warm-up"], QueryOptions(limit=10))  # model, table and indexes in memory
    _forget_refined(searcher)
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile(time.process_time)  # CPU time: a shared machine inflates wall time
    for name, fields in filters().items():
        for text in texts:
            for arm, exact in ARMS.items():
                searcher.store.exact_search = exact
                if profiler and arm == "default":
                    profiler.enable()
                started, cpu_started = time.perf_counter(), time.process_time()
                searcher.search([text], QueryOptions(limit=10, **fields))
                walls.setdefault((name, arm), []).append(time.perf_counter() - started)
                cpus.setdefault((name, arm), []).append(time.process_time() - cpu_started)
                if profiler:
                    profiler.disable()
                _forget_refined(searcher)
    searcher.store.exact_search = False
    if profiler:
        import pstats

        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
    return walls, cpus


def _forget_refined(searcher) -> None:
    """Nothing is written back during the latency phase: every query and arm refines alike."""
    if searcher.refiner:
        searcher.refiner.fine.clear()
        searcher.refiner.rows.clear()


class SizeSampler:
    """Samples the table's bytes on disk every `every` seconds on a thread: the peak in between the
    samples taken after each write-back, compactions included."""

    def __init__(self, db: Path, every: float = 0.1):
        from recall_cli.storage.growth import table_bytes

        self.measure = lambda: table_bytes(db)
        self.every = every
        self.peak = self.measure()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.measure())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def disk_growth(db: Path, texts: list[str], count: int) -> dict:
    """`count` queries through an in-process on-demand server (write-backs, compactions on the
    growth bound), on a copy of `db`; the table's bytes after each write-back and in between."""
    from recall_cli.query.options import QueryOptions
    from recall_cli.query.server import QueryServer, request, warm_query
    from recall_cli.storage.growth import table_bytes
    from recall_cli.storage.table import Store

    copy = db.parent / "growth"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(db, copy)
    Store(copy).maintain(keep_versions_s=0)  # the index as a finished `recall index` leaves it, no old version
    before = table_bytes(copy)
    server = QueryServer(copy, on_demand=True)
    server.start()
    sizes, seconds_each, started = [], [], time.perf_counter()
    try:
        server.warm_up()
        with SizeSampler(copy) as sampler:
            for number in range(count):
                text = f"{texts[number % len(texts)]} {number}"  # new words: new candidates to refine
                began = time.perf_counter()
                assert warm_query(copy, [text], QueryOptions(limit=10)) is not None
                seconds_each.append(time.perf_counter() - began)  # waits for the last write-back first
                request(copy, {"op": "status"})  # answered once the write-back (and compaction) is done
                sizes.append(table_bytes(copy))
        seconds = time.perf_counter() - started
        waiting = server._get_searcher().store.count("refined = false")
        compactions = server.compactions
        rewrites = server._get_searcher().store.rewrites
    finally:
        server.close()
    after = table_bytes(copy)
    shutil.rmtree(copy, ignore_errors=True)
    return {
        "queries": count,
        "seconds": seconds,
        "before": before,
        "after": after,
        "growth": after / before - 1.0,
        "peak_between_queries": max(sizes) / before - 1.0,
        "peak_sampled": max(sampler.peak, *sizes) / before - 1.0,
        "still_waiting": waiting,
        "compactions": compactions,
        "rewrites": rewrites,
        "slowest_s": max(seconds_each),
        "peak_after_query": sizes.index(max(sizes)) + 1,
        "mib_after_each": [round(size / 2**20, 1) for size in sizes],  # where the peak falls (the JSON)
    }


def prepare(db: Path, rows: int) -> dict:
    """The index in `db`: generated, or reused when it is already there with `rows` rows."""
    from recall_cli.storage.table import Store

    if (db / "manifest.sqlite").exists():
        store = Store(db)
        if store.table is not None and store.count() == rows and store.has_vector_index:
            return {"rows": rows, "seconds": 0.0, "cache_bytes": None, "reused": True}
        shutil.rmtree(db)
    return generate(db, rows)


PHASES = ("recall", "latency", "disk")


def main(
    quick: bool = False,
    rows: int | None = None,
    queries: int | None = None,
    writebacks: int | None = None,
    write: bool = True,
    reuse: str | None = None,
    ivf_pq: bool = False,
    profile: bool = False,
    phases_wanted: tuple[str, ...] = PHASES,
) -> str:
    from recall_cli.storage.growth import table_bytes

    log = lambda text: print(text, flush=True)  # noqa: E731
    load = load_check(log)
    rows = rows or (10_000 if quick else 100_000)
    queries = queries or (4 if quick else 12)
    writebacks = writebacks if writebacks is not None else (60 if quick else 1000)
    topics = ["kayak on the lake", "apple pie recipe", "tax invoice", "python server config", "guitar concert"]
    texts = (topics * ((queries // len(topics)) + 1))[:queries]
    report: dict = {"machine": machine_info(), "rows": rows, "queries": queries, "load_before": load}
    phases: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="recall-scale-") as folder:
        db = Path(reuse) if reuse else Path(folder) / "db"
        started = time.perf_counter()
        report["generate"] = prepare(db, rows)
        phases["generate and index"] = time.perf_counter() - started
        log(f"index of {rows:,} rows ready in {phases['generate and index']:.0f} s")
        report["disk_bytes"] = table_bytes(db)
        if "recall" in phases_wanted:
            started = time.perf_counter()
            _recall_phase(report, db, quick, ivf_pq)
            phases["recall"] = time.perf_counter() - started
            log(f"recall@10: {report['recall_at_10']['IVF_HNSW_SQ']}")
        if "latency" in phases_wanted:
            started = time.perf_counter()
            _latency_phase(report, db, texts, profile)
            phases["latency"] = time.perf_counter() - started
            log(f"latency done in {phases['latency']:.0f} s")
        if "disk" in phases_wanted:
            started = time.perf_counter()
            report["disk"] = disk_growth(db, topics, writebacks)
            phases["disk growth"] = time.perf_counter() - started
    report["phases_s"] = phases
    report["load_after"] = load_check(log)
    quiet = load["quiet"] and report["load_after"]["quiet"]
    markdown = _markdown(report, quick, quiet, phases_wanted)
    name = "scale" if tuple(phases_wanted) == PHASES else "scale-" + "-".join(phases_wanted)
    if write and not quick and quiet:
        write_results(name, report, markdown)
    elif write and not quick:
        log(f"the machine was busy: results/{name}.md left alone (rerun on a quiet machine)")
    return markdown


def _recall_phase(report: dict, db: Path, quick: bool, ivf_pq: bool) -> None:
    from recall_cli.storage.table import Store

    store = Store(db)
    vectors = query_vectors(topic_centres(np.random.default_rng(7)), 10 if quick else 50)
    report["recall_at_10"], report["index_seconds"] = {}, {}
    if ivf_pq:  # built, measured, then replaced by the index `maintain` builds
        started = time.perf_counter()
        store.create_vector_index("IVF_PQ")
        report["index_seconds"]["IVF_PQ"] = time.perf_counter() - started
        report["recall_at_10"]["IVF_PQ"] = recall_at_10(store, vectors)
        began = time.perf_counter()
        store.create_vector_index("IVF_HNSW_SQ")
        report["index_seconds"]["IVF_HNSW_SQ"] = time.perf_counter() - began
    report["recall_at_10"]["IVF_HNSW_SQ"] = recall_at_10(store, vectors)


def _latency_phase(report: dict, db: Path, texts: list[str], profile: bool) -> None:
    from recall_cli.query.search import Searcher

    walls, cpus = latency(Searcher(db), texts, profile)

    def cell(values: list[float], cpu: list[float]) -> dict:
        return {
            "p50": percentile(values, 0.5),
            "p95": percentile(values, 0.95),
            "cpu_p50": percentile(cpu, 0.5),
            "n": len(values),
        }

    report["latency"] = {f"{name} | {arm}": cell(values, cpus[(name, arm)]) for (name, arm), values in walls.items()}
    for arm in ARMS:
        every = [value for (_, each), values in walls.items() if each == arm for value in values]
        every_cpu = [value for (_, each), values in cpus.items() if each == arm for value in values]
        report["latency"][f"all filters | {arm}"] = cell(every, every_cpu)


def _markdown(report: dict, quick: bool, quiet: bool, phases_wanted: tuple[str, ...] = PHASES) -> str:
    made = report["generate"]
    generate_line = (
        f"{report['rows']:,} rows (reused)"
        if made.get("reused")
        else f"{report['rows']:,} rows generated and maintained in {made['seconds']:.0f} s "
        f"({made['cache_bytes'] / 2**20:.0f} MiB of INT4 cache)"
    )
    load = report["load_before"]
    phases = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in report["phases_s"].items())
    only = "".join(f" --only {phase}" for phase in phases_wanted) if tuple(phases_wanted) != PHASES else ""
    parts = [
        f"## Scale ({report['rows']:,} files, minilm shapes, synthetic vectors)",
        f"Machine: {machine_line(report['machine'])}; before the run others used "
        f"{load['busy_share']:.0%} of the cores (loadavg {load['loadavg_1m']:.2f}), after it "
        f"{report['load_after']['busy_share']:.0%}"
        + ("" if quiet else " (BUSY: the timings below are contaminated)")
        + f". Command: `python -m benchmarks.bench_scale{' --quick' if quick else ''}{only}`. "
        f"{generate_line}; table {report['disk_bytes'] / 2**20:.0f} MiB on disk. Phases: {phases}.",
    ]
    if "recall_at_10" in report:
        recall_rows = [
            [kind, *(f"{value:.3f}" for value in per_filter.values())]
            for kind, per_filter in report["recall_at_10"].items()
        ]
        filter_names = list(next(iter(report["recall_at_10"].values())))
        parts += [
            "Recall@10 of the store's default search (ANN, or exact where the filter leaves at most "
            "FLAT_MAX_ROWS rows) against exact search, the same filter on both:",
            markdown_table(["index", *filter_names], recall_rows),
        ]
    if "latency" in report:
        latency_rows = []
        for key, cell in report["latency"].items():
            name, arm = key.split(" | ")
            latency_rows.append(
                [name, arm, f"{cell['p50']:.3f}", f"{cell['p95']:.3f}", f"{cell['cpu_p50']:.3f}", cell["n"]]
            )
        parts += [
            f"Warm whole queries (embedding, exit groups, default refinement, keyword side), "
            f"{report['queries']} per filter and arm, arms alternated query by query; CPU: the "
            f"process's CPU seconds per query, every thread:",
            markdown_table(["filter", "search", "p50 s", "p95 s", "CPU p50 s", "queries"], latency_rows),
        ]
    if "disk" in report:
        disk = report["disk"]
        parts.append(
            f"Disk over {disk['queries']:,} queries with write-backs through an on-demand server "
            f"({disk['seconds']:.0f} s; {disk['compactions']} compactions on the growth bound, "
            f"{disk['rewrites']} of them dropping the copies write-backs replaced): "
            f"{disk['before'] / 2**20:.1f} MiB before, {disk['after'] / 2**20:.1f} MiB after "
            f"({100 * disk['growth']:+.1f}%); largest after any write-back "
            f"{100 * disk['peak_between_queries']:+.1f}% (after query {disk['peak_after_query']}), "
            f"largest sampled every 0.1 s (inside "
            f"compactions too) {100 * disk['peak_sampled']:+.1f}%; rows still waiting for "
            f"refinement: {disk['still_waiting']:,}; slowest query (with the write-back and "
            f"compaction before it) {disk['slowest_s']:.1f} s."
        )
    return "\n\n".join(parts)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--queries", type=int, help="queries per filter and arm in the latency phase")
    parser.add_argument("--writebacks", type=int, help="queries in the disk growth phase")
    parser.add_argument("--reuse", metavar="DIR", help="keep the generated index here and reuse it")
    parser.add_argument("--ivf-pq", action="store_true", help="also measure an IVF_PQ index's recall")
    parser.add_argument("--profile", action="store_true", help="cProfile of the warm default queries")
    parser.add_argument("--no-write", action="store_true", help="print only, leave benchmarks/results alone")
    parser.add_argument(
        "--only",
        action="append",
        choices=PHASES,
        help="run only this phase (repeatable); a partial run writes results/scale-<phases>.md",
    )
    args = parser.parse_args()
    markdown = main(
        args.quick,
        args.rows,
        args.queries,
        args.writebacks,
        not args.no_write,
        args.reuse,
        args.ivf_pq,
        args.profile,
        tuple(phase for phase in PHASES if phase in args.only) if args.only else PHASES,
    )
    print(markdown)
