"""OCR's time limit per image: a dense page stops being read once the image has taken
RECALL_OCR_SECONDS, keeps the lines read so far (top to bottom) and says so in the file's notes,
so one image never holds an index or watch batch for long."""

from __future__ import annotations

from mediafiles import text_image

from recall_cli.models.mediatext import describe, ocr

LINES = [f"Item {1000 + index} paid" for index in range(2 * ocr.CHUNK)]


def test_a_dense_page_is_read_whole_within_the_limit(tmp_path, monkeypatch):
    monkeypatch.setenv("RECALL_OCR_SECONDS", "120")  # a loaded test machine is not out of time
    page = text_image(tmp_path / "page.png", LINES, size=20, width=500)
    media = describe(page, "image")
    assert "1000" in media.text and str(999 + len(LINES)) in media.text
    assert not media.meta.get("notes")


def test_past_the_limit_the_first_lines_are_kept_and_noted(tmp_path, monkeypatch):
    monkeypatch.setenv("RECALL_OCR_SECONDS", "0")  # out of time after the first chunk of lines
    page = text_image(tmp_path / "page.png", LINES, size=20, width=500)
    media = describe(page, "image")
    assert "1000" in media.text and "1001" in media.text  # the top of the page
    assert str(999 + len(LINES)) not in media.text  # the bottom was never read
    assert any(note.startswith("OCR stopped after 0 s") for note in media.meta["notes"])


def test_a_bad_limit_keeps_the_default(monkeypatch):
    monkeypatch.setenv("RECALL_OCR_SECONDS", "soon")
    assert ocr.time_limit() == ocr.SECONDS
