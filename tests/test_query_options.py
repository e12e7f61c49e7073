"""One definition of the query options: the command line, the fast path to a running server and
the server's requests must agree on every option."""

import os

import pytest
import typer.main

from recall_cli.cli.commands import app
from recall_cli.errors import RecallError
from recall_cli.query.options import FLAGS, VALUES, QueryOptions, options_from_argv, parse_query_argv, query_options
from recall_cli.query.server import QueryServer

LEFT_TO_TYPER = {"--device", "--help"}  # need the model in this process, or only print


def _query_command():
    return typer.main.get_command(app).commands["query"]


def test_fast_path_knows_every_spelling_of_the_command_line_and_no_other():
    cli_flags, cli_values = set(), set()
    for param in _query_command().params:
        if not param.opts[0].startswith("-"):  # the TEXT argument
            continue
        spellings = set(param.opts) | set(param.secondary_opts)
        (cli_flags if param.is_flag else cli_values).update(spellings)
    assert cli_flags - LEFT_TO_TYPER == set(FLAGS)
    assert cli_values - LEFT_TO_TYPER == set(VALUES)


def test_argv_and_keyword_paths_give_the_same_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    argv = [
        "query",
        "red kayak",
        "-n3",
        "--offset=2",
        "-t",
        "image",
        "--in",
        "sub",
        "--like",
        "a.jpg",
        "--since",
        "2024-01-01",
        "--until",
        "2024-12-31",
        "--min-score",
        "0.2",
        "--budget",
        "1.5",
        "--exact",
    ]
    from_argv = options_from_argv(parse_query_argv(argv))
    from_keywords = query_options(
        limit=3,
        offset=2,
        modality="image",
        within="sub",
        like="a.jpg",
        since="2024-01-01",
        until="2024-12-31",
        min_score=0.2,
        budget=1.5,
        exact=True,
    )
    assert from_argv == from_keywords
    assert from_argv.within == os.path.realpath(tmp_path / "sub")  # the caller's directory, not the server's
    assert from_argv.like == str(tmp_path / "a.jpg")
    assert from_argv.refine == "exact"


def test_every_option_survives_the_trip_to_a_server():
    options = QueryOptions(
        limit=7,
        offset=1,
        modality="audio",
        within="/x",
        like="/y.wav",
        since="2020-01-01",
        until="2021-01-01",
        min_score=0.1,
        refine="off",
        budget=0.25,
        device="cpu",
    )
    request = options.to_request()
    assert "device" not in request  # the server runs its own model where it chose to
    assert QueryOptions.from_request(request) == QueryOptions(**{**vars(options), "device": None})


@pytest.mark.parametrize("payload", [{"limit": "ten"}, {"limit": True}, {"budget": "fast"}, {"modality": 3}])
def test_a_malformed_request_is_answered_with_an_error_not_a_crash(tmp_path, payload):
    server = QueryServer(tmp_path)
    reply = server.answer({"protocol": 1, "op": "query", "texts": ["x"], **payload})
    assert reply["ok"] is False and reply["exit"] == 2 and "bad request" in reply["error"]


def test_conflicting_refinement_flags_are_refused_on_every_path():
    with pytest.raises(RecallError, match="--exact and --no-refine"):
        query_options(exact=True, no_refine=True)
    assert parse_query_argv(["query", "x", "--exact", "--no-refine"]) is None  # typer then says why
