"""The full-size photo a model has just decoded, lent to the same file's text side, so that OCR's
text test and detection read it instead of decoding the JPEG again.

ImageBind decodes every photo whole (to resize it to 224 px); the text test then decoded the file a
second time at 1/8 scale (~18 ms of a 12 MP photo's ~110 ms of OCR CPU) and the detection pass a
third time at 1/2 (~45 ms) for the photos it lets through.  From the decoded pixels the two copies
cost ~7 and ~15 ms (`Image.reduce`, an average over boxes of pixels).

The photo is kept only inside `lend(path)`, by the thread that opened it, and only for that path:
a photo is ~36 MB at 12 MP, and refinement and healing decode files outside any such block (they
never run OCR), so nothing else holds one."""

from __future__ import annotations

import contextlib
import threading

_local = threading.local()


@contextlib.contextmanager
def lend(path):
    """A slot for the photo the model decodes for `path` in this block ({"image": PIL image or
    None}): the caller reads it before the block ends."""
    slot = {"path": _key(path), "image": None}
    previous = getattr(_local, "slot", None)
    _local.slot = slot
    try:
        yield slot
    finally:
        _local.slot = previous
        slot["image"] = None


def offer(path, image) -> None:
    """A model's decode hands its upright, full-size RGB photo of `path` over; kept only when this
    thread is inside lend(path)."""
    slot = getattr(_local, "slot", None)
    if slot is not None and slot["path"] == _key(path):
        slot["image"] = image


def _key(path) -> str:
    from pathlib import Path

    return str(Path(path))
