"""Speculative refinement at query time (candidates per exit group, refinement from the INT4
cache or the file, write-back, budget) and the query language (weighted terms, --like, dates,
--min-score, --offset)."""

from __future__ import annotations

import json
import os

import lancedb
import numpy as np
import pytest
from conftest import Cli, write_files

from recall_cli.early_exit import candidates, refine
from recall_cli.errors import RecallError
from recall_cli.query import language as querylang

# distinct topics: the full-depth ranking of each query has clear gaps, so "same order as full
# depth" is a deterministic check despite the INT4 cache (resumed embeddings have cosine ~0.998
# with exact ones)
DOCS = {
    "kayak.md": "Paddling the red kayak across the calm lake at sunset, then camping on the shore.",
    "pie.txt": "Grandma's apple pie recipe: flour, butter, sliced apples, cinnamon and sugar.",
    "train.md": "Train timetable from Berlin to Munich with hourly departures and platform numbers.",
    "eclipse.md": "We watched the total solar eclipse from the mountains; the sky went dark at noon.",
    "taxes.txt": "Tax return checklist: income statements, receipts, deductions and the filing deadline.",
    "dog.md": "Our dog loves playing fetch on the beach and swimming after the ball in the waves.",
    "guitar.md": "Guitar practice: chord changes, fingerpicking patterns and tuning the low E string.",
    "python.py": "def fibonacci(n):\n    # recursive Fibonacci numbers\n"
    "    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
}
QUERIES = [
    "boat on a lake",
    "apple dessert baking",
    "railway schedule",
    "dark sky during the day",
    "filing taxes",
    "puppy at the seaside",
    "playing music chords",
    "recursive function code",
]
MIX = "mix:2=0.5,4=0.5"


def rows(db):
    return {row["path"]: row for row in lancedb.connect(str(db)).open_table("units").to_arrow().to_pylist()}


def ranked(cli, query, *args):
    """Results by meaning alone: these tests are about the embeddings and their refinement."""
    result = cli("query", query, "--json", "--semantic", *args)
    assert result.exit_code in (0, 1), result.stderr
    return json.loads(result.stdout) if result.exit_code == 0 else []


def waiting(cli):
    return json.loads(cli("stats", "--json").stdout)["early_exit"]["waiting_refinement"]


@pytest.fixture(scope="module")
def full_index(tmp_path_factory):
    base = tmp_path_factory.mktemp("full")
    write_files(base / "files", DOCS)
    cli = Cli(base / "db")
    assert cli("index", base / "files", "--full").exit_code == 0
    return cli, base / "files"


def early_index(base, policy=MIX):
    write_files(base / "files", DOCS)
    cli = Cli(base / "db")
    assert cli("index", base / "files", "--exit-policy", policy).exit_code == 0
    return cli, base / "files"


def test_exact_refinement_gives_the_full_depth_ranking_and_writes_back(full_index, tmp_path):
    full_cli, full_root = full_index
    cli, root = early_index(tmp_path)
    assert waiting(cli) == len(DOCS)
    before = rows(cli.db)
    assert {row["exit_block"] for row in before.values()} == {2, 4}
    for query in QUERIES:
        expected = ranked(full_cli, query, "-n", "8")
        got = ranked(cli, query, "-n", "8", "--exact")

        def name(r):
            return os.path.basename(r["path"])

        # every file's refined score is its full-depth score within the INT4 cache's error ...
        full_score = {name(r): r["score"] for r in expected}
        assert all(r["refined"] for r in got) and len(got) == len(expected)
        for r in got:
            assert r["score"] == pytest.approx(full_score[name(r)], abs=0.03)
        # ... so the order is the full-depth order wherever full-depth scores are >= 0.06 apart
        # (asserted: the top result always; near-ties among unrelated files may swap)
        assert name(got[0]) == name(expected[0])
        for i in range(len(expected) - 1):
            if expected[i]["score"] - expected[i + 1]["score"] >= 0.06 and all(
                expected[i]["score"] - e["score"] >= 0.06 for e in expected[i + 1 :]
            ):
                assert {name(r) for r in got[: i + 1]} == {name(r) for r in expected[: i + 1]}
    after = rows(cli.db)
    full_rows = {os.path.basename(p): r for p, r in rows(full_cli.db).items()}
    for path, row in after.items():  # every candidate (the whole small collection) written back
        assert row["refined"] and row["cache"] is None and row["exit_block"] == before[path]["exit_block"]
        cosine = float(np.dot(row["vector"], full_rows[os.path.basename(path)]["vector"]))
        assert cosine > 0.99
    assert waiting(cli) == 0
    # a second query refines nothing new and ranks from the stored fine vectors
    again = ranked(cli, QUERIES[0], "-n", "3")
    assert [r["path"] for r in again][:1] == [str(root / "kayak.md")] and all(r["refined"] for r in again)


def test_no_refine_and_budget_zero_refine_nothing_default_refines(tmp_path):
    cli, root = early_index(tmp_path)
    results = ranked(cli, "boat on a lake", "--no-refine", "-n", "3")
    assert results and not any(r["refined"] for r in results)
    assert ranked(cli, "boat on a lake", "--budget", "0", "-n", "3") and waiting(cli) == len(DOCS)
    assert cli("query", "x", "--exact", "--no-refine").exit_code == 2
    results = ranked(cli, "boat on a lake", "-n", "3")  # default budget: a few candidates fit
    assert results[0]["path"] == str(root / "kayak.md") and results[0]["refined"]
    assert waiting(cli) < len(DOCS)


def test_released_cache_is_reencoded_and_deleted_file_is_skipped(full_index, tmp_path):
    full_cli, _ = full_index
    cli, root = early_index(tmp_path)
    table = lancedb.connect(str(cli.db)).open_table("units")
    table.update(where="true", values_sql={"cache": "NULL"})  # as if the budget released them all
    os.remove(root / "guitar.md")
    results = ranked(cli, "playing music chords", "--exact", "-n", "8")
    assert len(results) == len(DOCS)
    stored = rows(cli.db)
    guitar = stored[str(root / "guitar.md")]
    assert not guitar["refined"]  # gone: skipped, not a crash, keeps its coarse embedding
    full_rows = {os.path.basename(p): r for p, r in rows(full_cli.db).items()}
    for path, row in stored.items():
        if path.endswith("guitar.md"):
            continue
        assert row["refined"]  # re-encoded from the file at full depth: the exact fine embedding
        assert float(np.dot(row["vector"], full_rows[os.path.basename(path)]["vector"])) > 0.9999


def test_candidates_come_from_every_exit_group(tmp_path):
    assert candidates.group_share([1000, 10], wanted=5, pool=40) == [40, 5]
    assert candidates.group_share([100, 3, 0], wanted=10, pool=40) == [39, 3, 0]
    cli, root = early_index(tmp_path, "mix:2=0.75,5=0.25")
    from recall_cli.models import load_model
    from recall_cli.storage.manifest import Manifest
    from recall_cli.storage.table import Store

    store, manifest = Store(cli.db), Manifest(cli.db)
    vector = load_model("minilm").encode_texts(["anything at all"]).numpy()[0]
    selected = candidates.select_candidates(store, manifest.exit_summary(), vector, wanted=1, where=None)
    manifest.close()
    assert {row["exit_block"] for row in selected} == {2, 5}
    assert len({row["group"] for row in selected[:2]}) == 2  # the best of each group first


def test_query_language_parsing():
    assert querylang.parse_query("red kayak at sunset") == [(1.0, "red kayak at sunset")]
    assert querylang.parse_query("Grandma's pie") == [(1.0, "Grandma's pie")]
    assert querylang.parse_query('"beach" + "dog" - "people"') == [(1.0, "beach"), (1.0, "dog"), (-1.0, "people")]
    assert querylang.parse_query('2:"dog"') == [(2.0, "dog")]
    assert querylang.parse_query("'sea' - 0.5:'boat' + 1.5 : \"a \\\"quoted\\\" word\"") == [
        (1.0, "sea"),
        (-0.5, "boat"),
        (1.5, 'a "quoted" word'),
    ]
    assert querylang.parse_query("2:dog") == [(1.0, "2:dog")]  # no quote: plain text
    for bad in ('"beach" "dog"', '"beach" +', '"unterminated', '- "x" 2', '"" + "x"', '0:"x"'):
        with pytest.raises(RecallError) as error:
            querylang.parse_query(bad)
        assert "\n" not in str(error.value)
    assert querylang.parse_date("2024-03-01", end=True) - querylang.parse_date("2024-03-01") == 86400 * 10**9 - 1
    assert querylang.parse_date("2024-03-01T12:00:00+00:00") == 1709294400 * 10**9
    with pytest.raises(RecallError):
        querylang.parse_date("yesterday")


def test_weighted_like_dates_min_score_offset_end_to_end(full_index):
    cli, root = full_index
    top = ranked(cli, '"beach" + 2:"dog" - "water"', "-n", "1")
    assert os.path.basename(top[0]["path"]) == "dog.md" and top[0]["query"] == '"beach" + 2:"dog" - "water"'
    like = ranked(cli, "x", "--like", root / "kayak.md", "-n", "2")  # text + file
    assert ranked(cli, "-", "--like", root / "kayak.md")[:0] == []
    alone = json.loads(cli("query", "--like", root / "kayak.md", "--json", "-n", "2").stdout)
    assert os.path.basename(alone[0]["path"]) == "kayak.md" and alone[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert like and cli("query", "--like", root / "nope.md").exit_code == 2
    old = 946684800  # 2000-01-01
    (root / "train.md").write_text(DOCS["train.md"] + " Updated.")
    os.utime(root / "train.md", (old, old))
    assert cli("index", root).exit_code == 0  # rows keep the file's mtime (mtime_ns)
    since = ranked(cli, "railway schedule", "--since", "2001-01-01", "-n", "8")
    assert "train.md" not in {os.path.basename(r["path"]) for r in since} and len(since) == len(DOCS) - 1
    until = ranked(cli, "railway schedule", "--until", "2000-01-01")
    assert [os.path.basename(r["path"]) for r in until] == ["train.md"]
    assert cli("query", "x", "--since", "last week").exit_code == 2
    everything = ranked(cli, "railway schedule", "-n", "8")
    cut = everything[2]["score"]
    assert [r["path"] for r in ranked(cli, "railway schedule", "--min-score", str(cut))] == [
        r["path"] for r in everything[:3]
    ]
    page = ranked(cli, "railway schedule", "-n", "2", "--offset", "3")
    assert [r["path"] for r in page] == [r["path"] for r in everything[3:5]] and page[0]["rank"] == 4


def test_like_an_image_with_imagebind_test(tmp_path):
    from PIL import Image

    root = tmp_path / "files"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / f"{name}.png")
    cli = Cli(tmp_path / "db")
    assert cli("index", root, "--model", "imagebind-test", "--exit-policy", "fixed:1").exit_code == 0
    results = json.loads(cli("query", "--like", root / "b.png", "--json", "-n", "3", "--exact").stdout)
    assert os.path.basename(results[0]["path"]) == "b.png" and results[0]["refined"]
    assert results[0]["score"] == pytest.approx(1.0, abs=0.02)  # INT4-resumed vs exact query


def test_table_shows_refined_column():
    import io

    from recall_cli.cli.output import write_results

    stream = io.StringIO()
    write_results(
        [
            [
                {
                    "query": "q",
                    "rank": 1,
                    "path": "/a.md",
                    "score": 0.5,
                    "modality": "text",
                    "snippet": "",
                    "refined": True,
                },
                {
                    "query": "q",
                    "rank": 2,
                    "path": "/b.md",
                    "score": 0.4,
                    "modality": "text",
                    "snippet": "",
                    "refined": False,
                },
            ]
        ],
        "table",
        stream,
    )
    text = stream.getvalue()
    assert "refined" in text and "yes" in text and "no" in text


def test_idle_refinement_refines_and_writes_back(tmp_path):
    cli, root = early_index(tmp_path)
    assert refine.refine_idle(cli.db, lambda: False, 30.0)
    assert waiting(cli) == 0
    assert not refine.refine_idle(cli.db, lambda: False, 30.0)
