"""Which rows a first query refines: the best waiting rows of the whole index by coarse score, up to
max(50, 5 x results), whatever exit group they wait in (measured better than each group's best by
its share: benchmarks/bench_calibrate_query.py)."""

from __future__ import annotations

import json
import random
import re

import lancedb
import numpy as np
from conftest import Cli, run_recall, write_files

TOPICS = [
    "kayak lake paddle",
    "apple pie baking",
    "train timetable berlin",
    "guitar chords practice",
    "tax return receipts",
    "dog beach fetch",
    "solar eclipse sky",
    "python recursion code",
]
FILLER = [
    "morning",
    "evening",
    "weekend",
    "notes",
    "plan",
    "list",
    "idea",
    "story",
    "photo",
    "trip",
    "garden",
    "budget",
    "music",
    "city",
    "family",
]
QUERY = "paddling a boat across the lake"


def notes(count: int) -> dict[str, str]:
    rng = random.Random(7)
    return {f"note{i:03d}.md": " ".join([TOPICS[i % len(TOPICS)], *rng.choices(FILLER, k=12)]) for i in range(count)}


def units(db) -> list[dict]:
    return lancedb.connect(str(db)).open_table("units").to_arrow().to_pylist()


def test_a_first_query_refines_the_fifty_best_waiting_rows_across_exit_groups(tmp_path):
    write_files(tmp_path / "files", notes(120))
    cli = Cli(tmp_path / "db")
    assert cli("index", tmp_path / "files", "--exit-policy", "mix:2=0.5,4=0.5").exit_code == 0
    before = units(cli.db)
    assert {row["exit_block"] for row in before} == {2, 4} and not any(row["refined"] for row in before)
    from recall_cli.models import load_model

    query = load_model("minilm").encode_texts([QUERY]).numpy()[0]
    by_coarse = sorted(before, key=lambda row: -float(np.dot(row["vector"], query)))
    waiting = json.loads(cli("stats", "--json").stdout)["early_exit"]["waiting_refinement"]

    result = cli("query", QUERY, "--json", "--semantic", "--budget", "120")
    assert result.exit_code == 0, result.stderr

    refined = {row["id"] for row in units(cli.db) if row["refined"]}
    assert waiting - json.loads(cli("stats", "--json").stdout)["early_exit"]["waiting_refinement"] == 50
    assert len(refined) == 50  # not each group's share of a pool of 40 (20 + 20 rows)
    best = [row["id"] for row in by_coarse]
    # the 50 best by coarse score (a row or two at the edge may swap: the query's own embedding
    # path and this one round differently)
    assert set(best[:45]) <= refined <= set(best[:55])


def test_no_write_back_refines_every_query_of_a_batch_as_the_first_and_leaves_the_index(tmp_path):
    write_files(tmp_path / "files", notes(120))
    cli = Cli(tmp_path / "db")
    assert cli("index", tmp_path / "files", "--exit-policy", "mix:2=0.5,4=0.5").exit_code == 0
    waiting = json.loads(cli("stats", "--json").stdout)["early_exit"]["waiting_refinement"]

    args = ("query", "-", "--db", cli.db, "--jsonl", "--semantic", "--budget", "120", "-v", "--no-write-back")
    done = run_recall(*args, stdin=f"{QUERY}\n{QUERY}\n")
    assert done.returncode == 0, done.stderr

    # -v prints one line per query: "query '...': C candidates, W waiting, R refined (...)"
    refined = [int(count) for count in re.findall(r"\d+ waiting, (\d+) refined", done.stderr)]
    assert refined == [50, 50]  # the second query refines its rows again: nothing is shared
    paths = [json.loads(line)["path"] for line in done.stdout.splitlines()]
    assert len(paths) == 20 and paths[:10] == paths[10:]
    assert json.loads(cli("stats", "--json").stdout)["early_exit"]["waiting_refinement"] == waiting
    assert not any(row["refined"] for row in units(cli.db))


def test_a_first_query_refines_its_best_keyword_hits_whatever_their_coarse_score(tmp_path):
    """Hybrid fusion ranks a keyword hit by its similarity too: the keyword side's best hits are
    refined first (within the same 50 rows), so a hit whose coarse score is low is not ranked by it
    (here that coarse rank kept the only file with the word off the first page)."""
    texts = notes(200)
    target = "note004.md"  # a "tax return receipts" note, far from the query's meaning
    texts[target] += " zorblax"
    write_files(tmp_path / "files", texts)
    cli = Cli(tmp_path / "db")
    assert cli("index", tmp_path / "files", "--exit-policy", "fixed:2").exit_code == 0
    from recall_cli.models import load_model

    query = f"{QUERY} zorblax"
    vector = load_model("minilm").encode_texts([query]).numpy()[0]
    by_coarse = [row["path"] for row in sorted(units(cli.db), key=lambda row: -float(np.dot(row["vector"], vector)))]
    assert by_coarse.index(str((tmp_path / "files" / target).resolve())) > 60  # not among the 50 by coarse score

    result = cli("query", query, "--json", "--budget", "120")
    assert result.exit_code == 0, result.stderr
    hits = [row for row in json.loads(result.stdout) if row["path"].endswith(target)]
    assert hits, "the one file holding the word asked for is not on the first page"  # what a coarse rank did
    assert hits[0]["refined"] and hits[0]["keyword_score"] is not None
    refined = [row for row in units(cli.db) if row["refined"]]
    assert len(refined) == 50 and any(row["path"].endswith(target) for row in refined)
