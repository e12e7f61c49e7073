"""Is there text in this image?  A few milliseconds of numpy that decide whether OCR's detection
pass runs at all, so that a photo without text stays as cheap as it is without OCR.

A JPEG is decoded at a fraction of its size inside the DCT (Pillow's `draft`: a 1600x1200 photo
becomes 400x300 for about the cost of reading its entropy-coded data, ~3 ms), other formats at
full size and reduced.  On that grey copy, a cell of a line of text has many vertical edges
(letters) and calm background (flat, or several times calmer than the line) both above and below
it within a line's height.  Such cells are grouped into regions (8-connected), and a region
counts as text only when it looks like a line of letters, not like the edge of an object or a
patch of texture:

- its strokes go both ways: a letter is dark then light again along a row, so the rises and falls
  of grey level in its cells nearly balance (SWING); the rim of a cup, a horizon or a petal is one
  step up or down;
- it is a line: at least LINE_CELLS cells long and at least ASPECT times as long as it is tall
  (a few words); or it is a block of BLOCK_CELLS cells or more (a paragraph, a page turned
  sideways), where the lines have run together.

The copy is searched at its own scale and at half of it, for letters too tall for REACH.

Measured on real photos without text (scikit-image's and OpenCV's samples, desktop wallpapers),
it lets through about 1 in 6, where the cell test alone let through more than half
(bench_mediatext prints the rate per set).  What still passes is a regular texture in rows
(windows of a block of flats, a printed circuit board, coins, stones on flat ground), which pays
for the detection pass and finds nothing.  Text it misses: a single short word (less than
LINE_CELLS cells long at this scale), text with little contrast to its background (black on a
dark photo), a line broken up by a busy background behind it.

`RECALL_OCR=always` skips the gate (the detection pass then runs on every image).
"""

from __future__ import annotations

GATE_SIDE = 400  # shortest allowed longer side of the copy: 14-px text in a 1600-px photo is ~3.5 px
CELL = 8  # pixels per cell along a row
BUSY = 8.0  # mean |horizontal step| (grey levels) of a cell on a line of letters, at least
CALM = 2.0  # ... of a cell of plain background, or
CONTRAST = 8.0  # an eighth of the line's (text on a mildly textured wall, petals, a shirt)
REACH = 14  # rows searched above and below for background: the tallest line the copy holds
RUN = 3  # adjacent busy cells in a row: a word or more, not one edge
SWING = 0.45  # a region's mean of (smaller of rises and falls) / (larger), per cell: strokes, not an edge
LINE_CELLS = 5  # cells a line of text spans at least (40 px of the copy: a few words)
ASPECT = 8.0  # ... and how many times its height (in rows) its length (in px) is at least
BLOCK_CELLS = 120  # cells of a region that is a block of text whatever its shape
HALF_FROM = 64  # shortest side of a copy that is also searched at half scale


def gate_copy(image):
    """A small greyscale numpy copy of an open PIL image (which it may decode at reduced size, so
    open the file again for OCR).  A photo stored sideways (EXIF orientation 5 to 8) is turned, since
    the test looks for lines along the rows; which way round does not matter to it."""
    import numpy as np

    sideways = _orientation(image) in (5, 6, 7, 8)

    factor = 1
    while max(image.size) // (factor * 2) >= GATE_SIDE and factor < 8:
        factor *= 2
    if image.format == "JPEG":
        image.draft("L", (image.width // factor, image.height // factor))
        grey = image.convert("L")
    else:
        grey = image.convert("L")
        if factor > 1:
            grey = grey.reduce(factor)
    pixels = np.asarray(grey, dtype=np.float32)
    return np.ascontiguousarray(pixels.T) if sideways else pixels


def _orientation(image) -> int:
    try:
        return int(image.getexif().get(0x0112) or 1)
    except Exception:  # corrupt EXIF: read the pixels as stored
        return 1


def might_hold_text(pixels) -> bool:
    """True when a greyscale copy (as gate_copy makes) has at least one line of text in it, at its
    own scale or at half of it (letters taller than REACH rows have no calm within reach of their
    middle: at half scale they do)."""
    if pixels.ndim != 2 or min(pixels.shape) < 3:
        return False
    if _has_a_line(pixels):
        return True
    if min(pixels.shape) < HALF_FROM:
        return False
    height, width = (side - side % 2 for side in pixels.shape)
    half = pixels[:height, :width].reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))
    return _has_a_line(half)


def _has_a_line(pixels) -> bool:
    import numpy as np

    signed = np.diff(pixels, axis=1)
    height, width = signed.shape
    width -= width % CELL
    if width < CELL * RUN:
        return bool(np.abs(signed).max(initial=0) > BUSY)  # a sliver: let the detection pass decide
    shape = (height, width // CELL, CELL)
    rises = signed[:, :width].clip(min=0).reshape(shape).sum(axis=2)
    falls = (-signed[:, :width]).clip(min=0).reshape(shape).sum(axis=2)
    cells = (rises + falls) / CELL  # mean |horizontal step| per cell
    swing = np.minimum(rises, falls) / np.maximum(np.maximum(rises, falls), 1e-6)
    return any(_looks_like_text(region) for region in _regions(_line_cells(cells), swing))


def _line_cells(cells):
    """Busy cells with calm background above and below, in runs of at least RUN along a row."""
    import numpy as np

    background = np.maximum(CALM, cells / CONTRAST)  # what counts as background beside each cell
    line = (cells > BUSY) & (_calmest(cells, above=True) <= background) & (_calmest(cells, above=False) <= background)
    run = line.copy()
    for shift in range(1, RUN):
        run[:, :-shift] &= line[:, shift:]
        run[:, -shift:] = False
    covered = run.copy()  # every cell of each run, not only where it starts
    for shift in range(1, RUN):
        covered[:, shift:] |= run[:, :-shift]
    return covered


def _regions(covered, swing):
    """(rows, cells long, cells, mean swing) of each 8-connected region of line cells."""
    import cv2
    import numpy as np

    if not covered.any():
        return []
    count, labels, stats, _ = cv2.connectedComponentsWithStats(covered.astype(np.uint8), connectivity=8)
    swing_sums = np.bincount(labels.ravel(), weights=swing.ravel(), minlength=count)
    return [
        (
            int(stats[label, cv2.CC_STAT_HEIGHT]),
            int(stats[label, cv2.CC_STAT_WIDTH]),
            int(stats[label, cv2.CC_STAT_AREA]),
            float(swing_sums[label] / stats[label, cv2.CC_STAT_AREA]),
        )
        for label in range(1, count)
    ]


def _looks_like_text(region) -> bool:
    rows, long, cells, swing = region
    if swing < SWING:
        return False
    return (long >= LINE_CELLS and long * CELL >= ASPECT * rows) or cells >= BLOCK_CELLS


def _calmest(cells, above: bool):
    """For each cell, the calmest cell within REACH rows above (or below) it in its column."""
    import numpy as np

    calmest = np.full_like(cells, np.inf)
    for distance in range(1, min(REACH, len(cells) - 1) + 1):
        if above:
            np.minimum(calmest[distance:], cells[:-distance], out=calmest[distance:])
        else:
            np.minimum(calmest[:-distance], cells[distance:], out=calmest[:-distance])
    return calmest
