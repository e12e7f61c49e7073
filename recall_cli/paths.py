"""File names as the index stores and shows them: names that are not UTF-8 kept exactly, and
names made safe for a terminal, a table or JSON."""

from __future__ import annotations

import base64
import os
import re

# File names are bytes on POSIX; Python hands us names that are not UTF-8 with each bad byte as a
# lone surrogate (U+DC80..U+DCFF, "surrogateescape").  Arrow and SQLite accept only valid UTF-8, so
# the index stores such a byte as NUL + two hex digits: a real file name can never hold NUL, so
# the mapping is one-to-one, and names that are valid UTF-8 (nearly all) are stored unchanged.
_SURROGATE_BYTE = re.compile("[\udc80-\udcff]")
_STORED_BYTE = re.compile("\x00([0-9a-f]{2})")
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\udc80-\udcff\u2028\u2029]")


def stored_path(path: str) -> str:
    """The form of a file name written to the index (valid UTF-8 text)."""
    if path.isascii():
        return path
    return _SURROGATE_BYTE.sub(lambda match: "\x00%02x" % (ord(match.group()) - 0xDC00), path)


def real_path(stored: str) -> str:
    """The file name back from its stored form (what os.open and os.fsencode expect)."""
    if "\x00" not in stored:
        return stored
    return _STORED_BYTE.sub(lambda match: chr(0xDC00 + int(match.group(1), 16)), stored)


def display_path(path: str) -> str:
    """A file name as one printable line for people (see `printable`)."""
    return printable(real_path(path))


def printable(text: str) -> str:
    """Control characters and bytes that are not UTF-8 become escapes (\\n, \\x1b, \\xe9), so a
    hostile file name or file content can neither break a line nor drive the terminal."""
    if text.isprintable():
        return text
    return _UNPRINTABLE.sub(_escape_char, text)


def _escape_char(match: re.Match) -> str:
    char = match.group()
    code = ord(char) - 0xDC00 if "\udc80" <= char <= "\udcff" else ord(char)
    return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(char, f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def json_safe(result: dict) -> dict:
    """A record (query result, failure) as JSON can carry it: a file name that is not UTF-8 shows
    U+FFFD in "path" and is given exactly in "path_bytes" (base64 of the raw bytes), as ripgrep does."""
    path = result.get("path")
    if not isinstance(path, str) or path.isascii():
        return result
    raw = os.fsencode(path)
    try:
        raw.decode("utf-8")
        return result
    except UnicodeDecodeError:
        return {**result, "path": raw.decode("utf-8", "replace"), "path_bytes": base64.b64encode(raw).decode()}
