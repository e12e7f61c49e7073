"""The overlap of an index run (index/overlap.py): a batch encodes in the encoder thread while the
run decodes the next files and commits the batch before it.  The index it makes is the one a run
in series makes, the queue holds one batch (decoded work never runs more than two batches ahead of
what is committed), and an error in the encoder thread reaches the run."""

from __future__ import annotations

import threading
import time

import lancedb
import numpy as np
import pytest
from conftest import write_files

from recall_cli.index import indexer, pipeline
from recall_cli.index.indexer import IndexOptions, index_roots
from recall_cli.index.overlap import OVERLAP_ENV
from recall_cli.models.base import LayeredEncoder
from recall_cli.models.minilm.model import MiniLM
from recall_cli.storage.table import Store

FLUSH = 4


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setenv(OVERLAP_ENV, "1")  # off by default: these tests are about the overlapped run
    monkeypatch.setattr(indexer, "FLUSH_UNITS", FLUSH)
    monkeypatch.setattr(indexer, "FLUSH_FILES", FLUSH)
    monkeypatch.setattr(indexer, "TEXT_FLUSH_UNITS", FLUSH)
    monkeypatch.setattr(indexer, "TEXT_FLUSH_FILES", FLUSH)


def _tree(root):
    topics = ["kayak lake", "bread oven", "train ticket", "garden tomato", "piano chord", "river bridge"]
    write_files(root, {f"n{i:02d}.txt": f"notes {i}: {topics[i % 6]} " * (1 + i % 3) for i in range(18)})


def _rows(db):
    rows = lancedb.connect(str(db)).open_table("units").to_arrow().to_pylist()
    return {row["id"]: row for row in rows}


def test_encoding_overlaps_decoding_and_gives_the_index_a_serial_run_gives(tmp_path, monkeypatch, small_batches):
    root = tmp_path / "files"
    _tree(root)
    events = []  # (what, thread, start, end)
    committed, decoded, ahead = [0], [0], []
    real_encode, real_units, real_upsert = pipeline.encode_units, MiniLM.file_units, Store.upsert

    def encode_units(model, units, **kwargs):
        started = time.perf_counter()
        time.sleep(0.3)  # a slower model: decoding has time to happen meanwhile
        out = real_encode(model, units, **kwargs)
        events.append(("encode", threading.current_thread().name, started, time.perf_counter()))
        return out

    def file_units(self, path, modality):
        started = time.perf_counter()
        out = real_units(self, path, modality)
        decoded[0] += len(out)
        ahead.append(decoded[0] - committed[0])
        events.append(("decode", threading.current_thread().name, started, time.perf_counter()))
        return out

    def upsert(self, rows, **kwargs):
        committed[0] += len(rows)
        return real_upsert(self, rows, **kwargs)

    monkeypatch.setattr(pipeline, "encode_units", encode_units)
    monkeypatch.setattr(MiniLM, "file_units", file_units)
    # a window of new files is decoded in one call (index/decode_ahead.py): through file_units here,
    # so each file's decoding is seen
    monkeypatch.setattr(MiniLM, "text_files_units", LayeredEncoder.text_files_units)
    monkeypatch.setattr(Store, "upsert", upsert)
    options = IndexOptions(exit_policy="fixed:3")
    summary = index_roots([str(root)], tmp_path / "overlapped", options)
    assert summary.added == 18 and summary.failed == 0

    encodes = [e for e in events if e[0] == "encode"]
    decodes = [e for e in events if e[0] == "decode"]
    main = threading.main_thread().name
    assert all(e[1] == "recall-encoder" for e in encodes[:-1]) and all(d[1] == main for d in decodes)
    during = [d for d in decodes if any(e[2] < d[2] and d[3] < e[3] for e in encodes)]
    assert len(during) >= 3  # files decoded while a batch was encoding
    assert max(ahead) <= 2 * FLUSH + 3  # one batch in flight, one being gathered (3: longest file)

    monkeypatch.setenv(OVERLAP_ENV, "0")
    events.clear()
    assert index_roots([str(root)], tmp_path / "serial", options).added == 18
    assert all(e[1] == main for e in events)
    overlapped, serial = _rows(tmp_path / "overlapped"), _rows(tmp_path / "serial")
    assert overlapped.keys() == serial.keys()
    for key, row in serial.items():
        assert overlapped[key]["exit_block"] == row["exit_block"] == 3 and overlapped[key]["cache"] == row["cache"]
        assert np.allclose(overlapped[key]["vector"], row["vector"], atol=1e-6)


def test_an_error_in_the_encoder_thread_stops_the_run_and_keeps_what_was_committed(
    tmp_path, monkeypatch, small_batches
):
    root = tmp_path / "files"
    _tree(root)
    calls = [0]
    real_encode = pipeline.encode_units

    def encode_units(model, units, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            raise MemoryError("out of memory in the encoder")
        return real_encode(model, units, **kwargs)

    monkeypatch.setattr(pipeline, "encode_units", encode_units)
    with pytest.raises(MemoryError):
        index_roots([str(root)], tmp_path / "db", IndexOptions(exit_policy="fixed:3"))
    kept = {row["path"] for row in _rows(tmp_path / "db").values()}
    assert 0 < len(kept) < 18  # the batches before the failing one stay indexed
    monkeypatch.setattr(pipeline, "encode_units", real_encode)
    summary = index_roots([str(root)], tmp_path / "db", IndexOptions(exit_policy="fixed:3"))
    assert summary.added == 18 - len(kept) and summary.failed == 0


def test_text_is_written_in_larger_flushes_than_decoded_media(tmp_path, monkeypatch):
    # text units are strings: a run gathers up to TEXT_FLUSH_FILES files per write (fewer,
    # longer-sorted batches, less to compact); units holding decoded media keep the smaller bound
    from types import SimpleNamespace

    from recall_cli.index.overlap import PendingBatch

    monkeypatch.setattr(indexer, "TEXT_FLUSH_FILES", 10)
    monkeypatch.setattr(indexer, "FLUSH_FILES", 4)
    writes = []
    real_upsert = Store.upsert
    monkeypatch.setattr(
        Store, "upsert", lambda store, rows, **kw: (writes.append(len(rows)), real_upsert(store, rows, **kw))
    )
    write_files(tmp_path / "docs", {f"n{i:02d}.txt": f"note {i} about the lake" for i in range(25)})
    summary = index_roots([str(tmp_path / "docs")], tmp_path / "db", IndexOptions(model="minilm", full=True))
    assert summary.added == 25 and writes == [10, 10, 5]
    media = PendingBatch(units=[("p", None)] * 4, files={f"f{i}": None for i in range(4)}, text_only=False)
    assert indexer._IndexRun._pending_full(SimpleNamespace(pending=media))
    media.text_only = True
    assert not indexer._IndexRun._pending_full(SimpleNamespace(pending=media))
