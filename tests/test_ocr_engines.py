"""OCR engines in a process: photos decoded on several cores at once are read side by side, each
with its own engine (RapidOCR keeps per-call state on its detector), and a process never makes
more engines than it reads photos at once, its cores or MAX_ENGINES allow."""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from mediafiles import text_image

from recall_cli.models.mediatext import describe, ocr


@pytest.fixture
def fresh_engines(monkeypatch):
    """An empty engine pool, as in a new process."""
    monkeypatch.setattr(ocr, "_FREE", queue.LifoQueue())
    monkeypatch.setattr(ocr, "_MADE", [0])


def signs(tmp_path, count: int) -> list:
    return [text_image(tmp_path / f"sign{i}.png", [f"Invoice {4471 + i} paid"], size=28) for i in range(count)]


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: one engine")
def test_two_photos_read_at_once_run_side_by_side(tmp_path, monkeypatch, fresh_engines):
    both_detecting = threading.Barrier(2, timeout=20)  # broken (an error) if one waits for the other
    detect = ocr._detect

    def detect_together(detector, small, rows):
        both_detecting.wait()
        return detect(detector, small, rows)

    monkeypatch.setattr(ocr, "_detect", detect_together)
    with ThreadPoolExecutor(2) as pool:
        texts = [media.text for media in pool.map(lambda path: describe(path, "image"), signs(tmp_path, 2))]
    assert "4471" in texts[0] and "4472" in texts[1] and "4472" not in texts[0]
    assert ocr._MADE[0] == 2


def test_one_photo_at_a_time_makes_one_engine(tmp_path, fresh_engines):
    for index, path in enumerate(signs(tmp_path, 3)):
        assert str(4471 + index) in describe(path, "image").text
    assert ocr._MADE[0] == 1 and ocr._FREE.qsize() == 1


def test_never_more_engines_than_allowed(tmp_path, monkeypatch, fresh_engines):
    monkeypatch.setattr(ocr, "MAX_ENGINES", 1)
    with ThreadPoolExecutor(4) as pool:
        texts = [media.text for media in pool.map(lambda path: describe(path, "image"), signs(tmp_path, 4))]
    assert all(str(4471 + index) in text for index, text in enumerate(texts))
    assert ocr._MADE[0] == 1


def test_an_engine_that_fails_to_load_is_not_counted(tmp_path, monkeypatch, fresh_engines):
    """A failed load leaves that photo without OCR text (its note says so), and the next photo
    makes an engine instead of waiting forever for one that was never made."""
    monkeypatch.setattr(ocr, "MAX_ENGINES", 1)
    make = ocr._new_engine

    def damaged():
        raise RuntimeError("model file damaged")

    monkeypatch.setattr(ocr, "_new_engine", damaged)
    first, second = signs(tmp_path, 2)
    failed = describe(first, "image")
    assert "4471" not in failed.text and "OCR failed (RuntimeError)" in failed.meta["notes"]
    monkeypatch.setattr(ocr, "_new_engine", make)
    read: list = []
    reader = threading.Thread(target=lambda: read.append(describe(second, "image").text), daemon=True)
    reader.start()
    reader.join(timeout=60)  # a daemon: if it waits forever, the test fails instead of hanging
    assert read and "4472" in read[0]
    assert ocr._MADE[0] == 1
