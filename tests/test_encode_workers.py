"""Batches encoded side by side (models/device.map_batches, used by index/pipeline.py) and new text
files decoded a window at a time (index/decode_ahead.py): the index is the one a run that encodes
one batch at a time and decodes one file at a time makes, a bad file still fails alone, and the
settings that choose the workers behave."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import lancedb
import numpy as np
import pytest
import torch
from conftest import write_files

from recall_cli.early_exit import quant
from recall_cli.errors import RecallError
from recall_cli.index import pipeline
from recall_cli.index.indexer import IndexOptions, index_roots
from recall_cli.models import load_model
from recall_cli.models.device import WORKERS_ENV, encode_workers, map_batches

TOPICS = ["kayak lake", "bread oven", "train ticket", "garden tomato", "piano chord", "river bridge"]


def _tree(root, files: int = 40):
    # lengths from one line to several chunks: more than two batches of 32 units, unequal in cost
    write_files(
        root, {f"n{i:02d}.txt": f"note {i} on the {TOPICS[i % 6]}. " * (1 + (i * 37) % 90) for i in range(files)}
    )


def _rows(db):
    return {row["id"]: row for row in lancedb.connect(str(db)).open_table("units").to_arrow().to_pylist()}


def test_batches_side_by_side_make_the_index_one_batch_at_a_time_makes(tmp_path, monkeypatch):
    _tree(tmp_path / "files")
    seen = []  # (thread name, torch threads) per batch
    real = pipeline._encode_batch

    def encode_batch(model, modality, units, policy):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return real(model, modality, units, policy)

    monkeypatch.setattr(pipeline, "_encode_batch", encode_batch)
    options = IndexOptions(exit_policy="fixed:3")
    monkeypatch.setenv(WORKERS_ENV, "2")
    assert index_roots([str(tmp_path / "files")], tmp_path / "side", options).added == 40
    workers = {name for name, _ in seen}
    assert len(seen) > 2 and len(workers) == 2 and all(name.startswith("recall-encode") for name in workers)
    assert all(threads == 1 for _, threads in seen)  # each worker runs torch on one thread

    seen.clear()
    monkeypatch.setenv(WORKERS_ENV, "1")
    assert index_roots([str(tmp_path / "files")], tmp_path / "serial", options).added == 40
    assert {name for name, _ in seen} == {threading.main_thread().name}

    side, serial = _rows(tmp_path / "side"), _rows(tmp_path / "serial")
    assert side.keys() == serial.keys()
    for key, row in serial.items():
        assert side[key]["exit_block"] == row["exit_block"] == 3
        assert np.allclose(side[key]["vector"], row["vector"], atol=1e-5)
        # the cached states agree to well within one INT4 step (one or two threads may round the
        # last bit of a sum differently)
        ours, theirs = quant.decode_blob(side[key]["cache"]), quant.decode_blob(row["cache"])
        assert [s.shape for s in ours] == [s.shape for s in theirs]
        assert all(quant.relative_error(b, a) < 0.02 for a, b in zip(ours, theirs, strict=True))


def test_a_mixed_policy_keeps_its_shares_when_batches_run_side_by_side(tmp_path, monkeypatch):
    # the items may take their exits in another order, but the run takes the same exits
    _tree(tmp_path / "files")
    exits = {}
    for workers in ("2", "1"):
        monkeypatch.setenv(WORKERS_ENV, workers)
        options = IndexOptions(exit_policy="mix:2=0.5,6=0.5")
        assert index_roots([str(tmp_path / "files")], tmp_path / workers, options).added == 40
        exits[workers] = sorted(row["exit_block"] for row in _rows(tmp_path / workers).values())
    assert exits["2"] == exits["1"] and {2, 6} == set(exits["1"])


def test_text_files_decoded_together_give_the_units_of_each_alone_and_fail_alone(tmp_path):
    model = load_model("minilm")
    _tree(tmp_path / "files", files=12)
    write_files(tmp_path / "files", {"n05.txt": b"\x00\x01binary\x00" * 40})  # a bad one in the middle
    paths = sorted((tmp_path / "files").iterdir())
    together = model.text_files_units(paths)
    for path, units in zip(paths, together, strict=True):
        if path.name == "n05.txt":
            with pytest.raises(Exception) as alone:
                model.file_units(path, "text")
            assert type(units) is type(alone.value) and str(units) == str(alone.value)
            continue
        one = model.file_units(path, "text")
        assert [u.data for u in units] == [u.data for u in one]
        assert [getattr(u.data, "token_ids", None) for u in units] == [getattr(u.data, "token_ids", None) for u in one]


def test_an_index_run_decoding_ahead_fails_only_the_bad_file(tmp_path):
    _tree(tmp_path / "files", files=12)
    write_files(tmp_path / "files", {"n05.txt": b"\x00\x01binary\x00" * 40})
    summary = index_roots([str(tmp_path / "files")], tmp_path / "db", IndexOptions(full=True))
    assert summary.added == 11 and summary.failed == 1
    assert "NUL bytes" in summary.failures[0][1] and summary.failures[0][0].endswith("n05.txt")


def test_encode_workers_follow_the_model_the_device_and_the_setting(monkeypatch):
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    cpu = torch.device("cpu")
    small = SimpleNamespace(device=cpu, batches_side_by_side=True)
    large = SimpleNamespace(device=cpu, batches_side_by_side=False)
    gpu = SimpleNamespace(device=torch.device("cuda"), batches_side_by_side=True)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert encode_workers(small, 10) == 4 and encode_workers(small, 3) == 3 and encode_workers(small, 1) == 1
    assert encode_workers(large, 10) == 1 and encode_workers(gpu, 10) == 1
    monkeypatch.setenv(WORKERS_ENV, "2")
    assert encode_workers(large, 10) == 2 and encode_workers(gpu, 10) == 1
    monkeypatch.setenv(WORKERS_ENV, "many")
    with pytest.raises(RecallError, match=WORKERS_ENV):
        encode_workers(small, 10)


def test_map_batches_keeps_the_order_and_stops_at_an_error():
    started = []

    def work(job):
        started.append(job)
        time.sleep(0.01)  # a batch takes time: the error arrives while later ones wait
        if job == 3:
            raise ValueError("bad batch")
        return job * 10

    assert map_batches(lambda job: (time.sleep(0.01 * (job % 3)), job * 10)[1], list(range(8)), 2) == [
        job * 10 for job in range(8)
    ]
    with pytest.raises(ValueError, match="bad batch"):
        map_batches(work, list(range(40)), 2)
    assert len(started) < 40  # the batches not begun when the error came are not run
