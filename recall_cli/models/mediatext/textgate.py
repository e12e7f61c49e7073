"""Is there text in this image?  A few milliseconds of numpy that decide whether OCR's detection
pass runs at all, so that a photo without text stays as cheap as it is without OCR.

A JPEG is decoded at a fraction of its size inside the DCT (Pillow's `draft`: a 1600x1200 photo
becomes 400x300 for about the cost of reading its entropy-coded data, ~3 ms), other formats at
full size and reduced.  A 12 MP photo becomes 500x375 for ~18 ms of CPU, more than the ~7 ms a
15% drop leaves OCR when minilm indexes the photo in ~42 ms without it: on camera JPEGs no test
that reads the pixels keeps OCR within that target.  The 160x120 thumbnail a camera writes into
EXIF would cost ~1 ms, but the test on it passes only a third of the camera-size photos with
text that it passes on the file (bench_mediatext).

On that grey copy, a cell of a line of text has many vertical edges
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
it lets through 1 in 20 to 1 in 3 depending on the set (16% of held-out wallpapers), where the
cell test alone let through more than half
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
WHOLE = 0.6  # bands that cover more of the height than this: the detection pass reads it all
ROOM = 2 * REACH  # rows of room above and below a line in its band: the letters whose edges were found, whole


def gate_copy(image, upright: bool = False):
    """A small greyscale numpy copy of an open PIL image (which it may decode at reduced size, so
    open the file again for OCR).  A photo stored sideways (EXIF orientation 5 to 8) is turned, since
    the test looks for lines along the rows; which way round does not matter to it.  `upright`: the
    image is already decoded and turned (a model's decode, lent.py): reduced from its pixels, an
    average over boxes like the DCT's, before the grey conversion (a quarter of the cost after it)."""
    import numpy as np

    sideways = not upright and _orientation(image) in (5, 6, 7, 8)

    factor = 1
    while max(image.size) // (factor * 2) >= GATE_SIDE and factor < 8:
        factor *= 2
    if upright:
        grey = (image.reduce(factor) if factor > 1 else image).convert("L")
    elif image.format == "JPEG":
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


def text_rows(image, upright: bool = False) -> list[tuple[float, float]]:
    """Where the lines of text are in an open PIL image: bands of rows, as fractions of its height
    from the top of the photo as seen (EXIF orientation applied), with room above and below; []
    when it holds no text.  OCR's detection pass then reads only these bands.  `upright`: as
    gate_copy's."""
    from recall_cli.profiling import timed

    pixels = timed("ocr gate decode", gate_copy, image, upright)
    bands = timed("ocr gate", line_bands, pixels)
    # turned or flipped: the bands are rows of the stored image, not of the photo as seen
    if bands and not upright and _orientation(image) not in (1, 2):
        return [(0.0, 1.0)]
    return bands


def might_hold_text(pixels) -> bool:
    """True when a greyscale copy (as gate_copy makes) has at least one line of text in it."""
    return bool(line_bands(pixels))


def line_bands(pixels) -> list[tuple[float, float]]:
    """The bands of a copy (fractions of its height) around its lines of text, found at its own
    scale or at half of it (letters taller than REACH rows have no calm within reach of their
    middle: at half scale they do); [] when there is no line."""
    if pixels.ndim != 2 or min(pixels.shape) < 3:
        return []
    scales = [(pixels, _line_regions(pixels))]
    if min(pixels.shape) >= HALF_FROM:
        height, width = (side - side % 2 for side in pixels.shape)
        half = pixels[:height, :width].reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))
        scales.append((half, _line_regions(half)))
    if not any(_looks_like_text(region) for _, regions in scales for region in regions):
        return []
    spans = [  # the lines found at either scale, in rows of the copy
        (top * len(pixels) // len(copy), rows * len(pixels) // len(copy), ROOM * len(pixels) // len(copy))
        for copy, regions in scales
        for top, rows, _, _, swing in regions
        if swing >= SWING
    ]
    return _bands(spans, len(pixels))


def _bands(spans, height: int) -> list[tuple[float, float]]:
    """Row bands around the (top, rows, room) spans of regions whose strokes look like letters (the
    lines that passed, and shorter ones beside them: a one-word line of a receipt), with that room
    above and below, merged where they meet; the whole height when they cover most of it."""
    merged: list[list[int]] = []
    for start, end in sorted((max(0, top - room), min(height, top + rows + room)) for top, rows, room in spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    if sum(end - start for start, end in merged) > WHOLE * height:
        return [(0.0, 1.0)]
    return [(start / height, end / height) for start, end in merged]


def _line_regions(pixels) -> list[tuple[int, int, int, int, float]]:
    import numpy as np

    signed = np.diff(pixels, axis=1)
    height, width = signed.shape
    width -= width % CELL
    if width < CELL * RUN:  # a sliver: let the detection pass decide
        return [(0, height, RUN, BLOCK_CELLS, 1.0)] if np.abs(signed).max(initial=0) > BUSY else []
    shape = (height, width // CELL, CELL)
    rises = signed[:, :width].clip(min=0).reshape(shape).sum(axis=2)
    falls = (-signed[:, :width]).clip(min=0).reshape(shape).sum(axis=2)
    cells = (rises + falls) / CELL  # mean |horizontal step| per cell
    swing = np.minimum(rises, falls) / np.maximum(np.maximum(rises, falls), 1e-6)
    return _regions(_line_cells(cells), swing)


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
    """(top row, rows, cells long, cells, mean swing) of each 8-connected region of line cells."""
    import cv2
    import numpy as np

    if not covered.any():
        return []
    count, labels, stats, _ = cv2.connectedComponentsWithStats(covered.astype(np.uint8), connectivity=8)
    swing_sums = np.bincount(labels.ravel(), weights=swing.ravel(), minlength=count)
    return [
        (
            int(stats[label, cv2.CC_STAT_TOP]),
            int(stats[label, cv2.CC_STAT_HEIGHT]),
            int(stats[label, cv2.CC_STAT_WIDTH]),
            int(stats[label, cv2.CC_STAT_AREA]),
            float(swing_sums[label] / stats[label, cv2.CC_STAT_AREA]),
        )
        for label in range(1, count)
    ]


def _looks_like_text(region) -> bool:
    _, rows, long, cells, swing = region
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
