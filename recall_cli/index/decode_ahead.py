"""Decode new files a window at a time, so that decoding uses every core while the model waits:
text files through one call of a model that decodes many at once (MiniLM: one tokenizer call on
every core), photos on one thread per core (JPEG decoding, EXIF and the OCR text gate let go of
Python's lock; with ImageBind they were 4% of a full-depth run's wall time on one core while the
other idled).

An index run still applies its files one by one (index/indexer.py: hash, reuse, decode, encode);
the first new file of a window decodes the window's new files of its kind with it, and the files
after it find their units waiting.  Only new files are decoded ahead: a changed file may turn out
unchanged by its hash, and a window's result for a file the run then does not decode (a copy of
an indexed file) is only dropped.  A file that fails to decode fails as it would alone.  A file
written to between its decoding ahead and its turn (after the run hashed it) is decoded again,
so what is stored is what was hashed: its size and modification time are compared."""

from __future__ import annotations

import os
from pathlib import Path

from recall_cli.index.media import attach_text_side
from recall_cli.index.sniff import sniff_path
from recall_cli.models.mediatext.lent import lend
from recall_cli.profiling import timed

WINDOW_FILES = 64  # files looked at ahead: a window's text or pixels are held in memory until encoded
AHEAD = ("text", "image")  # audio and video decode to far more: one file at a time


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
        """The file's units (model.file_units) with their text side (a photo's, a song's), decoded
        with the next new files of its kind when it is new."""
        if entry.path not in self.ready and modality in AHEAD and entry.path in self.position:
            self._decode_window(self.position[entry.path], modality, model)
        found, when = self.ready.pop(entry.path, (None, None))
        if found is None or when != _signature(entry.path):
            return decoded_units(model, entry.path, modality)
        if isinstance(found, Exception):
            raise found
        return found

    def _decode_window(self, start: int, modality: str, model) -> None:
        window = self.todo[start : start + self.window]
        paths = [entry.path for entry, record in window if record is None and _sniffed(entry) == modality]
        if not paths or paths[0] != self.todo[start][0].path:
            return
        before = [_signature(path) for path in paths]
        if modality == "text":
            decoded = model.text_files_units([Path(path) for path in paths])
        else:
            decoded = _on_every_core(lambda path: _media_units(model, path, modality), paths)
        # a file written to while the window was read keeps no result (None: decoded at its turn)
        self.ready = {  # what the last window left was not needed
            path: (units, then)
            for path, units, then in zip(paths, decoded, before, strict=True)
            if then is not None and then == _signature(path)
        }


def decoded_units(model, path: str, modality: str) -> list:
    """A file's units with their text side.  A photo's OCR reads the photo the model decoded, if it
    decodes its pixels (ImageBind), instead of decoding the file again (models/mediatext/lent.py)."""
    with lend(path) as decoded:
        units = timed("decoding", model.file_units, Path(path), modality)
        timed("media text", attach_text_side, units, path, modality, decoded["photo"])
    return units


def _media_units(model, path: str, modality: str):
    """A photo's units with their text side (what the run would do at its turn), or the error."""
    try:
        return decoded_units(model, path, modality)
    except Exception as error:  # the file's own failure, told when the run reaches it
        return error


def _on_every_core(function, items: list) -> list:
    """[function(item) for item in items] on one thread per core (models/device.map_batches), the
    first item alone: it loads what decoding loads once per process (the OCR engines, the place
    names), which threads starting together would each load."""
    from recall_cli.models.device import map_batches

    if len(items) < 3:
        return [function(item) for item in items]
    return [function(items[0]), *map_batches(function, items[1:], os.cpu_count() or 1)]


def _sniffed(entry) -> str | None:
    try:
        return sniff_path(Path(entry.path), entry.size)
    except OSError:
        return None  # decoded (and its error told) when the run reaches it


def _signature(path: str) -> tuple | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns
