"""Text in images, read by RapidOCR (PaddleOCR's models on ONNX Runtime, shipped in its wheel: no
download at run time).

Cost control: a photo without text must stay cheap.  A test of a few milliseconds on a small
grey copy (textgate.py) decides whether the detection pass runs, and on which bands of rows (where
it found lines, with room around them); that pass, on a copy no larger than DETECT_SIDE pixels
(a JPEG decoded at a DCT scale: 1/2 of a 12 MP photo, ~35 ms where the full decode and a
resize cost ~160 ms), decides whether recognition runs at all; recognition
then reads only the boxes found: a line at least as tall in that decode as the recogniser reads it
(48 px) is cropped from it, a shorter one from the full-resolution image (decoded only then), so
small text is read at its real size.  An engine is loaded on the first image that needs it, and
another when photos decoded on several cores need one at the same time (_engine).

Bounded per image: recognition reads the lines top to bottom in chunks and stops once the image
has taken RECALL_OCR_SECONDS (default 3 s; detection itself is bounded by the size of its copy),
so a wall of posters or a dense page never holds a `recall watch` batch for long; what was read is
kept and the file's metadata notes that OCR stopped.

Off with `recall index --no-ocr`, or RECALL_OCR=0 in the environment (also for `recall watch`);
RECALL_OCR=always runs the detection pass on every image.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import re
import threading
import time

from recall_cli.models.mediatext.words import with_splits
from recall_cli.profiling import stage

DETECT_SIDE = 960  # longer side of the detection copy: 14-px text in a 1600-px photo is still found
# a JPEG's detection copy is decoded at the DCT scale that gives at least this, then reduced by area:
# decoded straight at ~DETECT_SIDE (1/4 of a 12 MP photo), thin strokes of small text come out
# fainter and detection lost 1 of 48 camera-size photos with 36-72 px text that 1/2 keeps (+~10 ms)
DECODE_SIDE = 3 * DETECT_SIDE // 2
MIN_SCORE = 0.5  # recognised lines less certain than this are noise (texture read as letters)
MAX_BOXES = 200  # a page of text; a photo of gravel does not get thousands of recognitions
CHUNK = 24  # lines recognised between two looks at the clock (~0.2 s of CPU)
SECONDS = 3.0  # per image, unless $RECALL_OCR_SECONDS says otherwise
THREADS = 1  # per onnxruntime session: its own threads cost ~1.8x the CPU of one (290 against 160 ms per
# detection pass on a 2-core machine), for a small gain in wall time while the encoder is busy anyway
MAX_ENGINES = 4  # engines a process runs side by side (one per core at most): each holds ~25 MB of
# models, and ~250 MB more while it runs a detection pass
_state = {"enabled": None}
_lock = threading.Lock()


def set_enabled(enabled: bool | None) -> bool | None:
    """Turn OCR on or off for this process (None: back to $RECALL_OCR, on by default); returns
    the setting it replaces, for the caller to put back."""
    before, _state["enabled"] = _state["enabled"], enabled
    return before


def enabled() -> bool:
    if _state["enabled"] is not None:
        return _state["enabled"]
    return os.environ.get("RECALL_OCR", "1").strip().lower() not in ("0", "off", "false", "no")


def gated() -> bool:
    """Whether the cheap text test (textgate.py) decides if the detection pass runs; off with
    RECALL_OCR=always, for a collection whose text the test misses."""
    return os.environ.get("RECALL_OCR", "1").strip().lower() != "always"


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("rapidocr_onnxruntime") is not None


def time_limit() -> float:
    """Seconds OCR may spend on one image ($RECALL_OCR_SECONDS; a bad value keeps the default)."""
    try:
        return max(0.0, float(os.environ.get("RECALL_OCR_SECONDS", SECONDS)))
    except ValueError:
        return SECONDS


def read_text(image, rows=None, full_size=None, upright: bool = False) -> tuple[str, int]:
    """(the text in an open PIL image, lines top to bottom, or "" when the detection pass finds
    none; the lines found but left unread when the time limit ran out, 0 when all were read).
    `rows`: the bands of rows (fractions of the height of the photo as seen, as the text gate gives
    them) the detection pass reads; None reads the whole image.  `full_size`: opens the file again,
    for recognition at full resolution when the detection copy was decoded at reduced size (a
    JPEG is, inside the DCT: _detection_copy), so a photo without text never pays for its full
    decode.  `upright`: the image is a photo already decoded and turned (a model's decode,
    lent.py): both copies come from its pixels, and recognition too unless `full_size` is given
    (that decode was smaller than the file)."""
    import numpy as np

    with _engine() as engine:
        started = time.monotonic()  # the engine's one-off load is not this image's time
        with stage("ocr detection decode"):
            # a model's decode is given with `full_size` exactly when it is smaller than the file
            seen, reduced = (image, full_size is not None) if upright else _as_seen(image)
            small = _detection_copy(seen)
        with stage("ocr detection"):
            boxes = _detect(engine.text_det, small, rows or [(0.0, 1.0)])
        if not len(boxes):
            return "", 0
        to_seen = np.array([seen.width / small.shape[1], seen.height / small.shape[0]], dtype=np.float32)
        boxes = reading_order(boxes[:MAX_BOXES] * to_seen)
        sources = _crop_sources(engine, seen, boxes, full_size if reduced else None)
        recognised, left = _recognise(engine, sources, started + time_limit())
    lines = [text for text, score in recognised if score >= MIN_SCORE and text.strip()]
    return "\n".join(with_splits(split_glued(line)) for line in lines), left


def _recognise(engine, sources: list, deadline: float) -> tuple[list, int]:
    """(text, score) of the boxes in order ((pixels, box) each: _crop_sources), CHUNK at a time
    until the deadline (the first chunk always); and how many boxes were left unread."""
    recognised: list = []
    for start in range(0, len(sources), CHUNK):
        if start and time.monotonic() >= deadline:
            return recognised, len(sources) - start
        with stage("ocr recognition"):
            crops = [engine.get_crop_img_list(pixels, [box])[0] for pixels, box in sources[start : start + CHUNK]]
            recognised += engine.text_rec(crops)[0]
    return recognised, 0


def _crop_sources(engine, seen, boxes, full_size) -> list:
    """(pixels, box) to read each box (in `seen`'s pixels) from.  The recogniser reads a line
    reduced to a fixed height (48 px): a box at least that tall in the decoded copy is read from
    it (what the full-size pixels add is only reduced away, and cropping them costs: 0.24 s for
    five large boxes of a 12 MP photo); a shorter one from the full-size pixels (`full_size`
    opens them; None: the copy is full size), decoded only when some box needs them."""
    import numpy as np

    pixels = _bgr(seen)
    short = _line_heights(boxes) < engine.text_rec.rec_image_shape[1]
    if full_size is None or not short.any():
        return [(pixels, box) for box in boxes]
    with stage("ocr full-size decode"), full_size() as full:
        whole = _bgr(_upright(full))
    to_whole = np.array([whole.shape[1] / pixels.shape[1], whole.shape[0] / pixels.shape[0]], dtype=np.float32)
    return [(whole, box * to_whole) if small else (pixels, box) for box, small in zip(boxes, short, strict=True)]


def _line_heights(boxes):
    """The height of each box's line as the recogniser reads it (N x 4 corners: top left, top
    right, bottom right, bottom left): a box 1.5 times as tall as wide is a vertical line, turned."""
    import numpy as np

    heights = np.maximum(
        np.linalg.norm(boxes[:, 0] - boxes[:, 3], axis=1), np.linalg.norm(boxes[:, 1] - boxes[:, 2], axis=1)
    )
    widths = np.maximum(
        np.linalg.norm(boxes[:, 0] - boxes[:, 1], axis=1), np.linalg.norm(boxes[:, 2] - boxes[:, 3], axis=1)
    )
    return np.where(heights >= 1.5 * widths, widths, heights)


def _as_seen(image):
    """(the photo as seen, EXIF orientation applied, decoded: a JPEG at the smallest DCT scale that
    still gives DECODE_SIDE; True when that is smaller than the file)."""
    reduced = draft_at_least(image, DECODE_SIDE)
    return _upright(image), reduced


def draft_at_least(image, longer: int, shorter: int = 0) -> bool:
    """Have a JPEG that is not decoded yet decoded at the smallest DCT scale (1/2, 1/4, 1/8: about
    the cost of reading its entropy-coded data) that keeps its longer side at least `longer` and
    its shorter side at least `shorter`; True when it will be smaller than stored (other formats
    are decoded whole: False)."""
    if image.format not in ("JPEG", "MPO"):  # MPO: a camera's JPEG with a second picture after it
        return False
    scale = max(longer / max(image.size), shorter / min(image.size))
    if scale >= 0.5:
        return False
    image.draft(None, (math.ceil(image.width * scale), math.ceil(image.height * scale)))
    return bool(image.decoderconfig) and image.decoderconfig[0] > 1


def _detection_copy(seen):
    """BGR pixels of the photo as seen, longer side at most DETECT_SIDE: reduced by averaging
    whole boxes of pixels (exact areas: none of the DCT's faint thin strokes) to at least
    DETECT_SIDE, then by area."""
    factor = max(1, max(seen.size) // DETECT_SIDE)
    pixels = _bgr(seen.reduce(factor) if factor > 1 else seen)
    scale = min(1.0, DETECT_SIDE / max(pixels.shape[:2]))
    return pixels if scale == 1.0 else _resized(pixels, scale)


def _upright(image):
    from PIL import ImageOps

    return ImageOps.exif_transpose(image)


def _bgr(image):
    import numpy as np

    rgb = image if image.mode == "RGB" else image.convert("RGB")  # no copy of a decoded photo first
    return np.asarray(rgb)[:, :, ::-1]  # the engine works in OpenCV's BGR


def _detect(detector, small, rows):
    """Text boxes (N x 4 corners, in `small`'s pixels) found in each band of rows of it."""
    import numpy as np

    found = []
    height = small.shape[0]
    for start, end in rows:
        top, bottom = int(start * height), min(height, int(np.ceil(end * height)))
        if bottom - top < 8:
            continue
        boxes, _ = detector(small[top:bottom])
        if boxes is not None and len(boxes):
            found.append(np.asarray(boxes, dtype=np.float32) + np.array([0, top], dtype=np.float32))
    return np.concatenate(found) if found else np.zeros((0, 4, 2), dtype=np.float32)


def reading_order(boxes):
    """Boxes (N x 4 corners) top to bottom, and left to right within a line (tops within half a
    line height of each other)."""
    import numpy as np

    if not len(boxes):
        return boxes
    tops, lefts = boxes[:, :, 1].min(axis=1), boxes[:, :, 0].min(axis=1)
    height = float(np.median(boxes[:, :, 1].max(axis=1) - tops)) or 1.0
    rows = np.round(tops / (height / 2)).astype(int)
    order = sorted(range(len(boxes)), key=lambda i: (rows[i], lefts[i]))
    return boxes[order].astype(np.float32)


def split_glued(line: str) -> str:
    """Recognition sometimes drops the space between a number and a word ('4471paid'); the index
    searches words, so they are split again."""
    return re.sub(r"(?<=\d)(?=[^\W\d_]{2,})|(?<=[^\W\d_]{2})(?=\d)", " ", line)


def _resized(pixels, scale: float):
    import cv2

    height, width = pixels.shape[:2]
    return cv2.resize(pixels, (max(32, round(width * scale)), max(32, round(height * scale))), cv2.INTER_AREA)


_FREE: queue.LifoQueue = queue.LifoQueue()  # engines made and not in use; the last one used first
_MADE = [0]


@contextlib.contextmanager
def _engine():
    """An engine for one image, this thread's alone while the block runs.  Photos are decoded on
    every core (index/decode_ahead.py): a thread that finds every engine busy makes another, up
    to one per core and MAX_ENGINES, so two photos' detection passes run side by side instead of
    one waiting for the other (RapidOCR's detector keeps per-call state on itself: one image at a
    time per engine).  One thread at a time only ever makes one."""
    engine = _free_engine()
    try:
        yield engine
    finally:
        _FREE.put(engine)


def _free_engine():
    try:
        return _FREE.get_nowait()
    except queue.Empty:
        pass
    with _lock:
        if _MADE[0] < min(os.cpu_count() or 1, MAX_ENGINES):
            # counted only once made: a load that fails must not leave a later thread waiting
            # below for an engine that will never be put back
            engine = _new_engine()
            _MADE[0] += 1
            return engine
    return _FREE.get()  # as many as allowed, all busy: the first one free


def _new_engine():
    """RapidOCR on one thread per session, its detector set to keep the copy at the size it is
    given ("min" with a small limit never scales up, so the detection copy is DETECT_SIDE or
    less)."""
    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR(intra_op_num_threads=THREADS, inter_op_num_threads=THREADS)
    engine.text_det.limit_type, engine.text_det.limit_side_len = "min", 32
    return engine
