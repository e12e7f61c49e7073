"""Hybrid search: exact words, phrases, identifiers and file names are found as surely as meanings,
the text side follows renames, moves and deletes, and an older index gains it in place."""

from __future__ import annotations

import json

import lancedb
import pytest
from conftest import assert_clear_error, run_recall, write_files

# Notes that all talk about boats and water, so that meaning alone cannot tell them apart.
NOTES = {
    "trips/lake.md": "We paddled the red kayak across the lake at dawn and watched the herons.",
    "trips/river.md": "A kayak, red paint peeling, drifted down the river past the old mill.",
    "trips/coast.md": "The ferry crossed the bay; seals followed the boat to the harbour.",
    "work/invoice.md": "Invoice 4471 for the boat repairs was paid late, with a small penalty.",
    "code/split.py": "def split(ary, indices_or_sections):\n    return array_split(ary, indices_or_sections)\n",
    "code/other.py": "def join(indices, sections, or_else=None):\n    return merge(indices, sections)\n",
}


def query(cli, *args) -> list[dict]:
    result = cli("query", *args, "--json", "-n", "10")
    assert result.exit_code in (0, 1), result.stderr
    return json.loads(result.stdout) if result.exit_code == 0 else []


def names(results: list[dict]) -> list[str]:
    return [result["path"].rsplit("/", 1)[1] for result in results]


@pytest.fixture
def notes(cli, tmp_path):
    root = tmp_path / "notes"
    write_files(root, NOTES)
    assert cli("index", root, "-q").exit_code == 0
    return root


def test_a_word_in_one_file_is_found_first(cli, notes):
    top = query(cli, "4471")[0]
    assert top["path"].endswith("invoice.md")
    assert top["keyword_score"] > 0 and top["similarity"] is not None
    assert 0 < top["score"] <= 1.0  # hybrid score: reciprocal rank fusion, 1.0 = first on both sides


def test_identifier_with_underscores_must_appear_as_written(cli, notes):
    # other.py holds `indices`, `or` and `sections` as separate words, split.py the identifier
    assert names(query(cli, "indices_or_sections", "--keyword")) == ["split.py"]
    assert names(query(cli, "indices_or_sections"))[0] == "split.py"


def test_quoted_phrase_matches_word_for_word(cli, notes):
    assert names(query(cli, '"red kayak"', "--keyword")) == ["lake.md"]
    assert names(query(cli, 'river "red paint"', "--keyword")) == ["river.md"]
    assert names(query(cli, '"kayak across"', "--keyword")) == ["lake.md"]
    assert query(cli, '"across kayak"', "--keyword") == []  # the same words, not in that order


def test_modes_switch_fusion_off(cli, notes):
    semantic = query(cli, "kayak", "--semantic")
    assert len(semantic) == len(NOTES) and all(result["keyword_score"] is None for result in semantic)
    assert [result["score"] for result in semantic] == [result["similarity"] for result in semantic]
    keyword = query(cli, "kayak", "--keyword")
    assert sorted(names(keyword)) == ["lake.md", "river.md"]  # only files holding the word
    assert keyword[0]["score"] == keyword[0]["keyword_score"]
    assert_clear_error(cli("query", "kayak", "--semantic", "--keyword"), "--semantic", "--keyword")


def test_file_and_folder_names_are_words(cli, notes):
    assert set(names(query(cli, "trips", "--keyword"))) == {"lake.md", "river.md", "coast.md"}
    assert names(query(cli, "name:invoice")) == ["invoice.md"]
    assert names(query(cli, "boat", "--name", "*INVOICE*")) == ["invoice.md"]  # glob on the name, any case
    assert set(names(query(cli, "water", "--name", "*.py"))) == {"split.py", "other.py"}


def test_renamed_moved_and_deleted_files_leave_no_stale_words(cli, notes):
    (notes / "trips" / "lake.md").rename(notes / "trips" / "dawn_paddle.md")
    (notes / "work").rename(notes / "accounts")
    (notes / "trips" / "coast.md").unlink()
    assert cli("index", notes, "-q").exit_code == 0
    assert names(query(cli, "name:lake")) == []
    assert names(query(cli, "name:paddle")) == ["dawn_paddle.md"]
    assert query(cli, "work", "--keyword") == []
    assert names(query(cli, "accounts", "--keyword")) == ["invoice.md"]
    assert query(cli, "seals", "--keyword") == []


@pytest.mark.parametrize("text", ['"', "*", ":", "(", ")", "a:b", "name:", "\\", "+", "café", "日本語のメモ", "NOT"])
def test_punctuation_and_unicode_never_crash(notes, db_dir, text):
    done = run_recall("query", text, "--db", db_dir, "--json")
    assert done.returncode in (0, 1, 2), done.stderr
    assert "Traceback" not in done.stderr
    if done.returncode == 2:
        assert_clear_error(done)
    else:
        json.loads(done.stdout or "[]")


def test_accented_words_match_without_accents(cli, tmp_path):
    write_files(tmp_path / "n", {"a.md": "Le café de la gare ferme à midi.", "b.md": "The station closes at noon."})
    assert cli("index", tmp_path / "n", "-q").exit_code == 0
    assert names(query(cli, "cafe", "--keyword")) == ["a.md"]


def as_made_by_the_previous_version(db_dir) -> int:
    """Strip the text side (columns and full-text indexes) from an index; returns its row count."""
    table = lancedb.connect(str(db_dir)).open_table("units")
    for index in table.list_indices():
        table.drop_index(index.name)
    table.drop_columns(["words", "name"])
    return table.count_rows()


def test_an_index_without_a_text_side_gains_it_in_place(cli, notes, db_dir):
    rows = as_made_by_the_previous_version(db_dir)
    assert query(cli, "4471", "--semantic")  # still answers by meaning
    assert names(query(cli, "4471", "--keyword")) == ["invoice.md"]  # the first keyword query upgrades it
    table = lancedb.connect(str(db_dir)).open_table("units")
    assert {"words", "name"} <= set(table.schema.names) and table.count_rows() == rows
    assert {column for index in table.list_indices() for column in index.columns} >= {"words", "name"}
    assert table.count_rows("words IS NULL") == 0


def test_index_run_upgrades_an_index_without_a_text_side(cli, notes, db_dir):
    as_made_by_the_previous_version(db_dir)
    (notes / "new.md").write_text("A zanzibar spice list.")
    assert cli("index", notes, "-q").exit_code == 0
    assert names(query(cli, "zanzibar", "--keyword")) == ["new.md"]
    assert names(query(cli, "4471", "--keyword")) == ["invoice.md"]  # rows from before the upgrade too


def test_images_are_found_by_their_file_name(cli, tmp_path):
    from PIL import Image

    root = tmp_path / "photos"
    root.mkdir()
    for name, color in (("IMG_kayak_2019.jpg", "red"), ("lighthouse.png", "blue"), ("DSC_0042.jpg", "green")):
        Image.new("RGB", (32, 32), color).save(root / name)
    assert cli("index", root, "--model", "imagebind-test", "-q").exit_code == 0
    assert names(query(cli, "kayak", "--type", "image"))[0] == "IMG_kayak_2019.jpg"
    assert names(query(cli, "lighthouse", "--type", "image"))[0] == "lighthouse.png"


def test_shell_completion_offers_the_new_options():
    for typed, offered in (("--sem", "--semantic"), ("--keyw", "--keyword"), ("--na", "--name")):
        done = run_recall(
            env={"_RECALL_COMPLETE": "complete_bash", "COMP_WORDS": f"recall query {typed}", "COMP_CWORD": "2"}
        )
        assert done.stdout.split() == [offered], done.stdout


def test_watch_keeps_the_words_in_step(cli, notes, db_dir):
    from watchutil import ThreadWatcher, converged, wait_until

    with ThreadWatcher(notes, db_dir) as watched:
        wait_until(lambda: converged(notes, db_dir, watched), message="catch-up")
        (notes / "trips" / "river.md").rename(notes / "trips" / "zambezi.md")
        (notes / "work" / "invoice.md").unlink()
        (notes / "trips" / "new.md").write_text("Quokka sightings on the island.")
        wait_until(lambda: converged(notes, db_dir, watched), message="the events to land")
    assert names(query(cli, "name:zambezi")) == ["zambezi.md"]
    assert query(cli, "name:river") == [] and query(cli, "4471", "--keyword") == []
    assert names(query(cli, "quokka", "--keyword")) == ["new.md"]
