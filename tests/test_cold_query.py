"""A cold `recall query` (no server) is lean: when nothing needs refining, the query is embedded by
the light (numpy) encoder without importing torch, and the results are those of the torch path."""

from __future__ import annotations

import json

import pytest
from conftest import SMALL_NOTES as NOTES
from conftest import run_recall, write_files

from recall_cli.models import load_model
from recall_cli.query.options import QueryOptions
from recall_cli.query.search import Searcher

QUERIES = ["boat on the water", "baking with fruit", "recursive function", "travel by rail", "paperwork"]
COLD = {"RECALL_NO_SERVER": "1"}


@pytest.fixture(scope="module")
def full_index(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cold")
    root, db = folder / "files", folder / "db"
    write_files(root, NOTES)
    assert run_recall("index", root, "--db", db, "--full", "-q").returncode == 0  # nothing to refine
    return root, db


def imported_modules(stderr: str) -> set[str]:
    return {line.split("|")[-1].strip() for line in stderr.splitlines() if line.startswith("import time")}


def test_a_cold_query_with_nothing_to_refine_does_not_import_torch(full_index):
    _, db = full_index
    done = run_recall("query", "red kayak", "--db", db, "--json", env={**COLD, "PYTHONPROFILEIMPORTTIME": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)[0]["path"].endswith("kayak.md")
    imported = imported_modules(done.stderr)
    assert "lancedb" in imported  # the import log is read (the query did search the table)
    assert "torch" not in imported
    assert "lance_namespace_urllib3_client.api" not in imported  # lancedb's unused REST client


def test_a_query_that_refines_loads_the_model_and_answers(tmp_path):
    root, db = tmp_path / "files", tmp_path / "db"
    write_files(root, NOTES)
    assert run_recall("index", root, "--db", db, "--exit-policy", "fixed:2", "-q").returncode == 0
    done = run_recall("query", "red kayak", "--db", db, "--json", env={**COLD, "PYTHONPROFILEIMPORTTIME": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)
    assert results[0]["path"].endswith("kayak.md") and results[0]["refined"]
    assert "torch" in imported_modules(done.stderr)


def test_light_and_torch_query_encoders_rank_alike(full_index):
    _, db = full_index
    searcher = Searcher(db)
    assert searcher._model is None  # the torch encoder is not loaded for the query embedding
    light = searcher.search(QUERIES, QueryOptions(limit=5))
    searcher.query_encoder = load_model("minilm", device="cpu")
    heavy = searcher.search(QUERIES, QueryOptions(limit=5))
    assert [[row["path"] for row in rows] for rows in light] == [[row["path"] for row in rows] for rows in heavy]
    for light_rows, heavy_rows in zip(light, heavy, strict=True):
        for ours, theirs in zip(light_rows, heavy_rows, strict=True):
            assert ours["similarity"] == pytest.approx(theirs["similarity"], abs=2e-6)
