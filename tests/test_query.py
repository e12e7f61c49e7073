"""`recall query`: ranking, output modes, batch mode, filters and exit codes."""

import json
import os

import pytest
from conftest import Cli, run_recall, write_files

DOCS = {
    "trips/kayak.md": "Paddling the red kayak across the lake at sunset.",
    "food/apple-pie.txt": "Grandma's apple pie recipe: flour, butter, apples and cinnamon.",
    "food/bread.md": "Sourdough bread: starter, flour, water, salt; bake in a dutch oven.",
    "travel/train.md": "Train timetable from Berlin to Munich with hourly departures.",
    "odd name\nwith newline.md": "Notes about the solar eclipse seen from the mountains.",
}


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    base = tmp_path_factory.mktemp("query")
    root, db = base / "files", base / "db"
    write_files(root, DOCS)
    cli = Cli(db)
    assert cli("index", root).exit_code == 0
    return cli, root


def test_best_match_ranks_first_with_all_json_fields(indexed):
    cli, root = indexed
    result = cli("query", "baking a pie with apples", "--json", "-n", "3")
    assert result.exit_code == 0
    results = json.loads(result.stdout)
    assert [r["rank"] for r in results] == [1, 2, 3]
    assert results[0]["path"] == str(root / "food/apple-pie.txt")
    for item in results:
        assert {"query", "rank", "path", "score", "modality"} <= item.keys()
        assert item["query"] == "baking a pie with apples" and os.path.isabs(item["path"])
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)


def test_jsonl_paths_and_nul_output(indexed):
    cli, root = indexed
    lines = cli("query", "train to Munich", "--jsonl", "-n", "2").stdout.splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["path"].endswith("train.md")
    paths = cli("query", "train to Munich", "-l", "-n", "2").stdout.splitlines()
    assert len(paths) == 2 and paths[0] == str(root / "travel/train.md")
    raw = cli("query", "eclipse", "-0", "-n", "1").stdout
    assert raw == str(root / "odd name\nwith newline.md") + "\0"  # NUL-separated survives newlines


def test_batch_mode_answers_each_stdin_line(indexed):
    cli, root = indexed
    result = cli("query", "-", "--jsonl", "-n", "1", stdin="kayak on a lake\n\nsourdough starter\n")
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(a["query"], os.path.basename(a["path"])) for a in answers] == [
        ("kayak on a lake", "kayak.md"),
        ("sourdough starter", "bread.md"),
    ]


def test_type_and_in_filters_and_offset(indexed):
    cli, root = indexed
    inside = json.loads(cli("query", "apple", "--json", "--in", root / "travel").stdout)
    assert [os.path.basename(r["path"]) for r in inside] == ["train.md"]
    assert cli("query", "apple", "--type", "image").exit_code == 1  # grep-like: no results
    everything = json.loads(cli("query", "food", "--json", "-n", "5").stdout)
    second_page = json.loads(cli("query", "food", "--json", "-n", "2", "--offset", "2").stdout)
    assert [r["path"] for r in second_page] == [r["path"] for r in everything[2:4]]
    assert [r["rank"] for r in second_page] == [3, 4]


def test_plain_output_when_piped_is_tab_separated(indexed):
    cli, root = indexed
    first = cli("query", "kayak", "-n", "1").stdout.rstrip("\n").split("\t")
    assert first[0] == "1" and first[2] == "text" and first[3] == str(root / "trips/kayak.md")
    float(first[1])


def test_errors_exit_2_with_one_line(tmp_path):
    cli = Cli(tmp_path / "nowhere")
    result = cli("query", "anything")
    assert result.exit_code == 2 and "no index" in result.stderr and "Traceback" not in result.stderr
    assert cli("query", "x", "--json", "--jsonl").exit_code == 2


def test_real_process_reads_stdin_and_sets_exit_codes(indexed):
    cli, root = indexed
    done = run_recall("query", "-", "--db", cli.db, "-l", "-n", "1", stdin="apple pie\ntrain\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(root / "food/apple-pie.txt"), str(root / "travel/train.md")]
    none = run_recall("query", "x", "--db", cli.db, "--type", "audio")
    assert none.returncode == 1 and none.stdout == ""


def test_terminal_table_has_score_type_path_and_snippet():
    import io

    from recall_cli.cli.output import write_results

    stream = io.StringIO()
    write_results(
        [
            [
                {
                    "query": "q",
                    "rank": 1,
                    "path": "/notes/kayak.md",
                    "score": 0.8123,
                    "modality": "text",
                    "snippet": "Paddling the\nred kayak",
                }
            ]
        ],
        "table",
        stream,
    )
    text = stream.getvalue()
    for expected in ("score", "type", "path", "snippet", "0.812", "text", "/notes/kayak.md", "Paddling the red kayak"):
        assert expected in text
