"""The photo a model has just decoded, lent to the same file's text side, so that OCR's text test
and detection read it instead of decoding the JPEG again.

ImageBind decodes every photo (a large JPEG at 1/2 or less inside the DCT, at no less than what
OCR's detection pass decodes itself: models/imagebind/media/image.py) to resize it to 224 px; the
text test then decoded the file a second time at 1/8 scale (~18 ms of CPU for a 12 MP photo) and
the detection pass a third time at 1/2 (~25 ms) for the photos it lets through.  From the decoded
pixels the two copies cost ~2 and ~5 ms (`Image.reduce`, an average over boxes of pixels).
Recognition of the text found reads the file at full size when the lent photo is smaller (small
text is legible only there): only photos with text pay for that decode.

The photo is kept only inside `lend(path)`, by the thread that opened it, and only for that path:
a photo is ~36 MB at 12 MP, and refinement and healing decode files outside any such block (they
never run OCR), so nothing else holds one."""

from __future__ import annotations

import contextlib
import threading
from typing import NamedTuple

_local = threading.local()


class Photo(NamedTuple):
    image: object  # PIL image, RGB, upright (EXIF orientation applied)
    whole: bool  # at the file's full size (else smaller: a JPEG decoded at a DCT scale)


@contextlib.contextmanager
def lend(path):
    """A slot for the photo the model decodes for `path` in this block ({"photo": Photo or None}):
    the caller reads it before the block ends."""
    slot = {"path": _key(path), "photo": None}
    previous = getattr(_local, "slot", None)
    _local.slot = slot
    try:
        yield slot
    finally:
        _local.slot = previous
        slot["photo"] = None


def offer(path, image, whole: bool = True) -> None:
    """A model's decode hands its upright RGB photo of `path` over (`whole`: at the file's full
    size); kept only when this thread is inside lend(path)."""
    slot = getattr(_local, "slot", None)
    if slot is not None and slot["path"] == _key(path):
        slot["photo"] = Photo(image, whole)


def _key(path) -> str:
    from pathlib import Path

    return str(Path(path))
