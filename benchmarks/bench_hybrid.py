"""Hybrid search: exact words, names and file names found as surely as meanings.

On the first 300 docstrings of the public corpus, indexed at full depth with minilm:
- one-word queries naming a term (an identifier or a rare word) that occurs in exactly one
  document: R@1 of vector only (--semantic), words only (--keyword) and both fused (default);
- the corpus's own paraphrase queries: R@10 and MRR@10, the same three ways;
- two fusions computed from the same two rankings (top 50 of each side): reciprocal rank fusion
  (what recall does) and a weighted sum of min-max normalised scores, to document the choice;
- warm query latency in one process, fused vs vector only, the two alternated query by query.
On a folder of images named by their subject (imagebind-test: random weights, so the images
themselves say nothing): R@1 of a query naming the subject.

No query reaches any training, and nothing here was tuned on these queries (RRF's constant is
the customary 60).

    python -m benchmarks.run --only hybrid [--quick]
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

from .bench_core import load_corpus, retrieval_metrics, write_corpus_files
from .common import machine_info, machine_line, markdown_table, percentile, recall_cmd, run_measured, write_results

DOCS = 300
MODES = {"vector only (--semantic)": ("--semantic",), "words only (--keyword)": ("--keyword",), "hybrid": ()}
SUBJECTS = [
    "kayak",
    "lighthouse",
    "bicycle",
    "giraffe",
    "volcano",
    "saxophone",
    "cathedral",
    "tractor",
    "pelican",
    "umbrella",
    "harbor",
    "waterfall",
    "accordion",
    "lantern",
    "glacier",
    "motorcycle",
    "peacock",
    "telescope",
    "vineyard",
    "windmill",
    "canoe",
    "carousel",
    "dolphin",
    "fireworks",
    "hammock",
    "iceberg",
    "jellyfish",
    "ladder",
    "mailbox",
    "orchard",
    "pagoda",
    "pumpkin",
    "quilt",
    "raccoon",
    "sailboat",
    "scarecrow",
    "snowman",
    "sunflower",
    "tortoise",
    "trombone",
    "tulip",
    "violin",
    "walrus",
    "wheelbarrow",
    "zebra",
    "anchor",
    "bonfire",
    "cactus",
    "chandelier",
    "compass",
    "dragonfly",
    "easel",
    "ferris",
    "flamingo",
    "fountain",
    "gazebo",
    "hedgehog",
    "igloo",
    "kettle",
    "kite",
    "lemonade",
    "meadow",
    "mushroom",
]
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{3,}")


def unique_term_queries(rows: list[dict], limit: int, seed: int = 0) -> list[dict]:
    """One query per document at most: a word (identifier or not, 4+ characters, case ignored)
    found in that document and in no other, chosen at random among its unique words."""
    words_of = {row["id"]: {word.lower() for word in _WORD.findall(row["doc"])} for row in rows}
    frequency = Counter(word for words in words_of.values() for word in words)
    rng = random.Random(seed)
    queries = []
    for row in rows:
        unique = sorted(word for word in words_of[row["id"]] if frequency[word] == 1)
        if unique:
            queries.append({"id": row["id"], "query": rng.choice(unique)})
    rng.shuffle(queries)
    return queries[:limit]


def ranked_lists(db: Path, queries: list[str], extra: tuple, n: int = 10) -> dict[str, list[dict]]:
    """All queries through one `recall query -` process: query text -> its results."""
    measured = run_measured(
        recall_cmd("query", "-", "--db", db, "--jsonl", "-n", n, *extra), stdin="\n".join(queries) + "\n"
    )
    assert measured["rc"] in (0, 1), measured["stderr"]
    ranked: dict[str, list[dict]] = {query: [] for query in queries}
    for line in measured["stdout"].splitlines():
        result = json.loads(line)
        ranked[result["query"]].append(result)
    return ranked


def metrics(ranked: dict[str, list[dict]], items: list[dict], truth: dict[str, str]) -> dict:
    paths = {item["id"]: [result["path"] for result in ranked[item["query"]]] for item in items}
    return retrieval_metrics(paths, {item["id"]: truth[item["id"]] for item in items})


def offline_fusions(vector: dict, keyword: dict, k: int = 60, alpha: float = 0.5) -> dict[str, dict]:
    """Two fusions of the same two rankings: RRF, and alpha * minmax(cosine) + (1-alpha) * minmax(BM25)."""
    fused = {"plain RRF (k=60)": {}, f"weighted min-max (alpha={alpha})": {}}
    for query in vector:
        rrf: Counter = Counter()
        for side in (vector[query], keyword[query]):
            for rank, result in enumerate(side, 1):
                rrf[result["path"]] += 1.0 / (k + rank)
        fused["plain RRF (k=60)"][query] = [{"path": path} for path, _ in rrf.most_common()]
        weighted: Counter = Counter()
        for side, weight, key in ((vector[query], alpha, "similarity"), (keyword[query], 1 - alpha, "keyword_score")):
            scores = [result[key] for result in side if result[key] is not None]
            low, high = (min(scores), max(scores)) if scores else (0.0, 1.0)
            for result in side:
                if result[key] is not None:
                    weighted[result["path"]] += weight * (result[key] - low) / ((high - low) or 1.0)
        fused[f"weighted min-max (alpha={alpha})"][query] = [{"path": path} for path, _ in weighted.most_common()]
    return fused


def filename_benchmark(work: Path, subjects: list[str]) -> dict:
    """Images named by their subject (in several naming styles), indexed with random-weight
    ImageBind: a query naming the subject must find its image by name alone."""
    from PIL import Image

    folder = work / "photos"
    folder.mkdir()
    rng = random.Random(1)
    styles = ("{s}.jpg", "IMG_{s}_2019.jpg", "{s}_at_dusk.png", "{S}Photo.jpg", "DSC-{s}-0042.jpeg")
    truth = {}
    for index, subject in enumerate(subjects):
        style = styles[index % len(styles)]
        name = style.format(s=subject, S=subject.capitalize())
        color = tuple(rng.randrange(256) for _ in range(3))
        image = Image.new("RGB", (64, 48), color)
        image.save(folder / name)
        truth[subject] = str((folder / name).resolve())
    db = work / "db-photos"
    indexed = run_measured(recall_cmd("index", folder, "--db", db, "--model", "imagebind-test", "--json", "-q"))
    assert indexed["rc"] == 0, indexed["stderr"]
    items = [{"id": subject, "query": subject} for subject in subjects]
    results = {}
    for label, extra in MODES.items():
        ranked = ranked_lists(db, subjects, ("--type", "image", *extra))
        results[label] = metrics(ranked, items, truth)
    return {"images": len(subjects), "quality": results}


def latency(db: Path, queries: list[str]) -> dict:
    """Warm, in one process: each query vector-only then fused (A B A B...), per-query seconds."""
    from recall_cli.query.options import QueryOptions
    from recall_cli.query.search import Searcher

    searcher = Searcher(db)
    semantic, hybrid = QueryOptions(mode="semantic"), QueryOptions()
    for options in (semantic, hybrid):
        searcher.search(["warm-up"], options)
    times = {"semantic": [], "hybrid": []}
    for query in queries:
        for label, options in (("semantic", semantic), ("hybrid", hybrid)):
            start = time.perf_counter()
            searcher.search([query], options)
            times[label].append(time.perf_counter() - start)
    p50 = {label: percentile(values, 0.5) for label, values in times.items()}
    return {
        "queries": len(queries),
        "semantic_p50_ms": 1000 * p50["semantic"],
        "hybrid_p50_ms": 1000 * p50["hybrid"],
        "hybrid_p95_ms": 1000 * percentile(times["hybrid"], 0.95),
        "ratio_p50": p50["hybrid"] / p50["semantic"],
    }


def main(quick: bool = False) -> str:
    info = machine_info()
    load_before = os.getloadavg()[0]
    rows = load_corpus()[:DOCS]
    with tempfile.TemporaryDirectory(prefix="recall-bench-") as folder:
        work = Path(folder)
        paths = write_corpus_files(rows, work / "docs")
        db = work / "db"
        indexed = run_measured(recall_cmd("index", work / "docs", "--db", db, "--full", "-q"))
        assert indexed["rc"] == 0, indexed["stderr"]
        unique = unique_term_queries(rows, 100 if quick else DOCS)
        paraphrase = [{"id": row["id"], "query": row["query"]} for row in rows]
        sets = {"one-word unique term": unique, "paraphrase (corpus queries)": paraphrase}
        quality, fusion = {}, {}
        for set_name, items in sets.items():
            texts = [item["query"] for item in items]
            runs = {label: ranked_lists(db, texts, extra, n=50) for label, extra in MODES.items()}
            quality[set_name] = {label: metrics(ranked, items, paths) for label, ranked in runs.items()}
            offline = offline_fusions(runs["vector only (--semantic)"], runs["words only (--keyword)"])
            fusion[set_name] = {label: metrics(ranked, items, paths) for label, ranked in offline.items()}
        lat = latency(db, [item["query"] for item in paraphrase[: 40 if quick else 150]])
        names = filename_benchmark(work, SUBJECTS[:20] if quick else SUBJECTS)
    load_after = os.getloadavg()[0]
    data = {
        "machine": info,
        "load_1min": [load_before, load_after],
        "docs": DOCS,
        "quality": quality,
        "fusion": fusion,
        "latency": lat,
        "filenames": names,
    }
    table = []
    for set_name, by_mode in quality.items():
        for label, m in by_mode.items():
            table.append([set_name, label, m["queries"], m["R@1"], m["R@10"], m["MRR@10"]])
    fusion_table = [
        [set_name, label, m["R@1"], m["R@10"], m["MRR@10"]]
        for set_name, by_fusion in fusion.items()
        for label, m in by_fusion.items()
    ]
    name_table = [[label, m["queries"], m["R@1"], m["R@10"]] for label, m in names["quality"].items()]
    markdown = "\n\n".join(
        [
            "## Hybrid search (minilm, full depth, first 300 docstrings)",
            f"Machine: {machine_line(info)}; 1-minute load {load_before:.2f} before, {load_after:.2f} after. "
            "Command: `python -m benchmarks.run --only hybrid" + (" --quick" if quick else "") + "`.",
            markdown_table(["queries", "mode", "n", "R@1", "R@10", "MRR@10"], table),
            "Fusions of the same two rankings (top 50 of each side), computed offline. recall's own "
            "(the `hybrid` rows above) is RRF with the vector ranking taken over the keyword side's "
            "files too, so a file only the keyword side found is not tied with the vector side's first:",
            markdown_table(["queries", "fusion", "R@1", "R@10", "MRR@10"], fusion_table),
            f"Images named by their subject ({names['images']}, imagebind-test random weights, `--type image`):",
            markdown_table(["mode", "queries", "R@1", "R@10"], name_table),
            "Warm latency in one process, vector only and fused alternated query by query:",
            markdown_table(
                ["queries", "vector-only p50 ms", "hybrid p50 ms", "hybrid p95 ms", "hybrid / vector-only (p50)"],
                [
                    [
                        lat["queries"],
                        lat["semantic_p50_ms"],
                        lat["hybrid_p50_ms"],
                        lat["hybrid_p95_ms"],
                        lat["ratio_p50"],
                    ]
                ],
            ),
        ]
    )
    write_results("hybrid", data, markdown)
    return markdown


if __name__ == "__main__":
    import sys

    print(main(quick="--quick" in sys.argv))
