"""Decode new text files a window at a time, so a model that decodes many files at once faster
than one by one (MiniLM: one tokenizer call over the window, on every core) can.

An index run still applies its files one by one (index/indexer.py: hash, reuse, decode, encode);
the first new text file of a window decodes the window's new text files with it, and the files
after it find their units waiting.  Only new files are decoded ahead: a changed file may turn out
unchanged by its hash, and a window's result for a file the run then does not decode (a copy of
an indexed file) is only dropped.  A file that fails to decode fails as it would alone.  A file
written to between its decoding ahead and its turn (after the run hashed it) is decoded again,
so what is stored is what was hashed: its size and modification time are compared."""

from __future__ import annotations

import os
from pathlib import Path

from recall_cli.index.sniff import sniff_path

WINDOW_FILES = 64  # files looked at ahead: a window's text is held in memory until encoded


class DecodeAhead:
    def __init__(self, todo: list, flush_files: int):
        # (FileEntry, FileRecord | None) in the order the run applies them; a slice, because
        # iterating the run's own list may have effects (calibrate_sample.SampleFirst)
        self.todo = todo[:]
        # never more than a flush ahead: what is decoded and not yet written stays bounded
        self.window = max(1, min(WINDOW_FILES, flush_files))
        self.position = {entry.path: index for index, (entry, _) in enumerate(self.todo)}
        self.ready: dict[str, tuple] = {}  # path -> (units or the decoding error, stat when decoded)

    def units(self, entry, modality: str, model) -> list:
        """The file's units (model.file_units), decoded with the next new text files when it is new text."""
        if entry.path not in self.ready and modality == "text" and entry.path in self.position:
            self._decode_window(self.position[entry.path], model)
        found, when = self.ready.pop(entry.path, (None, None))
        if found is None or when != _signature(entry.path):
            return model.file_units(Path(entry.path), modality)
        if isinstance(found, Exception):
            raise found
        return found

    def _decode_window(self, start: int, model) -> None:
        paths = [entry.path for entry, record in self.todo[start : start + self.window] if _new_text(entry, record)]
        if not paths or paths[0] != self.todo[start][0].path:
            return
        before = [_signature(path) for path in paths]
        decoded = model.text_files_units([Path(path) for path in paths])
        # a file written to while the window was read keeps no result (None: decoded at its turn)
        self.ready = {  # what the last window left was not needed
            path: (units, then)
            for path, units, then in zip(paths, decoded, before, strict=True)
            if then is not None and then == _signature(path)
        }


def _signature(path: str) -> tuple | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def _new_text(entry, record) -> bool:
    if record is not None:
        return False
    try:
        return sniff_path(Path(entry.path), entry.size) == "text"
    except OSError:
        return False  # decoded (and its error told) when the run reaches it
