"""What keeps a warm query fast on a large index without changing its answer: the exit groups that
are searched exactly share one scan, the manifest's exit summary is kept between queries (and read
again when the manifest changes), and refinement batches candidates of similar length."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from test_compaction import DIM, rows

from recall_cli.early_exit import candidates
from recall_cli.storage.layout import prepare_index_dir
from recall_cli.storage.table import Store


def grouped_store(tmp_path, low: float = 0.0, per_group: int = 120) -> tuple[Store, list[tuple], np.ndarray]:
    """A table of three exit groups (text waiting at block 2, at block 4, and refined) and its exit
    summary; `low` < 0 points the block-2 rows away from the query: their scores run lower."""
    db = tmp_path / "db"
    prepare_index_dir(db)
    store = Store(db, dim=DIM)
    query = np.ones(DIM, np.float32) / np.sqrt(DIM)
    table_rows = []
    for exit_block, refined, shift in ((2, False, low), (4, False, 0.0), (6, True, 0.0)):
        made = rows([f"b{exit_block}-{i}" for i in range(per_group)], exit_block)
        for row in made:
            vector = np.asarray(row["vector"], np.float32) + shift * np.sqrt(DIM) * query
            row.update(vector=(vector / np.linalg.norm(vector)).tolist(), exit_block=exit_block, refined=refined)
        table_rows += made
    store.upsert(table_rows)
    summary = [
        ("text", 2, 6, per_group, 0, 0, 0),
        ("text", 4, 6, per_group, 0, 0, 0),
        ("text", 6, 6, per_group, per_group, 0, 0),
    ]
    return store, summary, query


def picked(selected: list[dict]) -> list[tuple]:
    return [(row["id"], row["group"], row["group_rank"], row["share"]) for row in selected]


@pytest.mark.parametrize("low", [0.0, -0.6])
def test_a_shared_scan_picks_the_same_candidates_as_one_search_per_group(tmp_path, monkeypatch, low):
    """Every exit group is scanned exactly here (no vector index): one scan serves them all, and a
    group it cannot fill (its scores run lower than the others') is searched on its own; the
    candidates are the same as with one search per group."""
    store, summary, query = grouped_store(tmp_path, low)
    searches = []
    original = store.search
    monkeypatch.setattr(store, "search", lambda *args, **kw: searches.append(args[2]) or original(*args, **kw))
    shared = candidates.select_candidates(store, summary, query, wanted=10, where=None)
    shared_searches = list(searches)
    monkeypatch.setattr(candidates, "_shared_scan", lambda *args: {})  # one search per group
    searches.clear()
    alone = candidates.select_candidates(store, summary, query, wanted=10, where=None)
    assert len(searches) == 3
    assert picked(shared) == picked(alone)
    assert {row["exit_block"] for row in shared} == {2, 4, 6}
    if not low:
        assert len(shared_searches) == 1  # the shared scan answered every group
    else:
        assert len(shared_searches) == 2 and "exit_block = 2" in shared_searches[1]  # the short group alone


def test_a_group_behind_the_vector_index_rides_along_the_shared_scan(tmp_path, monkeypatch):
    """Once one exit group is scanned exactly, the group the vector index would serve (a large
    refined one) takes its rows from that same scan: one search per query instead of two, and its
    candidates are the exact ones."""
    from recall_cli.storage import table

    store, summary, query = grouped_store(tmp_path)
    store.create_vector_index()
    summary[2] = ("text", 6, 6, 1000, 1000, 0, 0)  # the refined group counted past FLAT_MAX_ROWS
    monkeypatch.setattr(table, "FLAT_MAX_ROWS", 200)
    assert not store.scans_exactly("refined", matching=1000) and store.scans_exactly("x", matching=120)
    searches = []
    original = store.search
    monkeypatch.setattr(store, "search", lambda *args, **kw: searches.append(args[2]) or original(*args, **kw))
    shared = candidates.select_candidates(store, summary, query, wanted=10, where=None)
    assert len(searches) == 1
    monkeypatch.setattr(candidates, "_shared_scan", lambda *args: {})  # one exact search per group
    store.exact_search = True
    alone = candidates.select_candidates(store, summary, query, wanted=10, where=None)
    assert picked(shared) == picked(alone)
    assert {row["exit_block"] for row in shared} == {2, 4, 6}


def test_a_filter_is_applied_to_the_shared_scan(tmp_path):
    store, summary, query = grouped_store(tmp_path)
    selected = candidates.select_candidates(store, summary, query, wanted=5, where="path LIKE '%-1%'")
    assert selected and all("-1" in row["path"] for row in selected)
    assert {row["exit_block"] for row in selected} == {2, 4, 6}


def test_the_exit_summary_is_kept_until_the_manifest_changes(tmp_path):
    """A warm process reads the summary once; a commit from another connection, or a manifest
    replaced by a rebuild, makes the next query read it again; it answers on any thread."""
    import os
    import shutil

    from recall_cli.storage.exit_summary import ExitSummary
    from recall_cli.storage.manifest import Manifest

    db = tmp_path / "db"
    prepare_index_dir(db)
    writer = Manifest(db, create=True)
    writer.set_exits("/f/a.md", "text", [(2, 6, 3, 0, 3, 300)])
    summary = ExitSummary(db)
    assert summary.get() == [("text", 2, 6, 3, 0, 3, 300)]
    assert summary.get() == [("text", 2, 6, 3, 0, 3, 300)] and summary.reads == 1
    writer.set_exits("/f/a.md", "text", [(2, 6, 3, 2, 1, 100)])  # a write-back refined two units
    assert summary.get() == [("text", 2, 6, 3, 2, 1, 100)] and summary.reads == 2
    writer.close()
    rebuilt = tmp_path / "rebuilt"
    prepare_index_dir(rebuilt)
    other = Manifest(rebuilt, create=True)
    other.set_exits("/f/b.md", "image", [(4, 6, 1, 1, 0, 0)])
    other.close()
    shutil.rmtree(db)
    os.rename(rebuilt, db)  # `index --rebuild` swaps in a new directory
    seen = []
    thread = threading.Thread(target=lambda: seen.append(summary.get()))
    thread.start()
    thread.join()
    assert seen == [[("image", 4, 6, 1, 1, 0, 0)]]
    summary.close()


def test_refinement_in_batches_of_similar_length_gives_each_item_its_own_vector():
    """Candidates of very different lengths are resumed in separate batches: each gets the same
    vector as when it is resumed alone."""
    import torch

    from recall_cli.early_exit.encode import _similar_lengths, resume
    from recall_cli.models import load_model

    model = load_model("minilm")
    generator = torch.Generator().manual_seed(3)
    lengths = [16, 250, 40, 200, 17, 120]
    states = [[torch.randn(length, model.dim, generator=generator)] for length in lengths]
    exits = [2, 2, 4, 2, 4, 2]
    assert _similar_lengths([0, 1, 3, 5], states) == [[1, 3], [5], [0]]
    together = resume(model, "text", states, exits)
    for index, (state, exit_block) in enumerate(zip(states, exits, strict=True)):
        alone = resume(model, "text", [state], [exit_block])[0]
        assert torch.allclose(together[index], alone, atol=1e-5), f"item {index} got another item's vector"
