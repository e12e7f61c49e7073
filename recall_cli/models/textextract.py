"""Turn a text-like file (notes, markup, source code, HTML, PDF) into plain text."""

from __future__ import annotations

import html
import logging
import re
import warnings
from html.parser import HTMLParser
from pathlib import Path

from recall_cli.models.base import DecodeError

# Larger text files are read only this far: a notes collection rarely has more in one file, and
# a multi-gigabyte log would otherwise dominate an index run.
MAX_TEXT_BYTES = 2 * 1024 * 1024

HTML_SUFFIXES = {".html", ".htm", ".xhtml"}


def extract_text(path: Path) -> str:
    """The file's text.  Raises DecodeError (one line) when it is not usable text."""
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return _pdf_text(path)
    raw = _read_prefix(path)
    text = decode_text_bytes(raw)
    if suffix in HTML_SUFFIXES:
        text = html_to_text(text)
    text = text.strip()
    if not text:
        raise DecodeError("no text in file")
    return text


def _read_prefix(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_TEXT_BYTES)
    except OSError as error:
        raise DecodeError(f"cannot read: {error.strerror or error}") from None


def decode_text_bytes(raw: bytes) -> str:
    """UTF-8 (with or without BOM), UTF-16 with BOM; otherwise a clear refusal.  A file that is
    mostly valid UTF-8 with a few bad bytes is kept with replacement characters."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16", errors="replace")
    if b"\x00" in raw[:8192]:
        raise DecodeError("binary data (NUL bytes) in a text file")
    text = raw.decode("utf-8-sig", errors="replace")
    bad = text.count("\ufffd")
    if bad and bad > max(8, len(text) // 100):
        raise DecodeError("not UTF-8 text (too many invalid bytes)")
    return text


class _TextOnly(HTMLParser):
    SKIP = {"script", "style", "noscript", "template"}
    BREAKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BREAKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP and self.skipping:
            self.skipping -= 1

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = _TextOnly()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # malformed markup: fall back to stripping tags
        return html.unescape(re.sub(r"<[^>]+>", " ", markup))
    text = "".join(parser.parts)
    return re.sub(r"[ \t]+", " ", re.sub(r"\n\s*\n+", "\n\n", text))


def _pdf_text(path: Path) -> str:
    try:
        from pypdf import PdfReader
    except ImportError:  # optional dependency
        raise DecodeError("PDF support needs the 'pypdf' package") from None
    # pypdf logs a warning per repair it makes to a damaged file ("Object 6 0 not defined."): noise
    # around the one line the user gets (text, or the DecodeError below)
    logging.getLogger("pypdf").setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = PdfReader(str(path))
            pages = [page.extract_text() or "" for page in reader.pages[:200]]
    except Exception as error:  # pypdf raises many types on damaged files
        raise DecodeError(f"unreadable PDF ({type(error).__name__})") from None
    text = "\n".join(pages).strip()
    if not text:
        raise DecodeError("PDF has no extractable text (scanned image?)")
    return text
