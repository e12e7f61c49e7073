"""Is there text in this image?  A few milliseconds of numpy that decide whether OCR's detection
pass runs at all, so that a photo without text stays as cheap as it is without OCR.

A JPEG is decoded at a fraction of its size inside the DCT (Pillow's `draft`: a 1600x1200 photo
becomes 400x300 for about the cost of reading its entropy-coded data, ~3 ms), other formats at
full size and reduced.  On that grey copy, a line of text is a horizontal run of cells with many
vertical edges (letters) that has calm background (flat, or several times calmer than the line)
both above and below it within a line's height.  A smooth photo (sky, skin, a gradient) has no
busy cells; a page, a screenshot, a receipt or a sign has such runs.  Busy textures (gravel,
foliage, the windows of a building) can pass too: they then pay for the detection pass, which
finds nothing.  The gate is tuned to say "text" when in doubt, since "no text" for a scan loses
its words, while "text" for gravel costs only time.

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


def gate_copy(image):
    """A small greyscale numpy copy of an open PIL image (which it may decode at reduced size, so
    open the file again for OCR).  A photo stored sideways is not turned: the test finds a line of
    text across its letters too."""
    import numpy as np

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
    return np.asarray(grey, dtype=np.float32)


def might_hold_text(pixels) -> bool:
    """True when a greyscale copy (as gate_copy makes) has at least one line of text in it."""
    import numpy as np

    if pixels.ndim != 2 or min(pixels.shape) < 3:
        return False
    steps = np.abs(np.diff(pixels, axis=1))
    height, width = steps.shape
    width -= width % CELL
    if width < CELL * RUN:
        return bool(steps.max(initial=0) > BUSY)  # a sliver: let the detection pass decide
    cells = steps[:, :width].reshape(height, width // CELL, CELL).mean(axis=2)
    background = np.maximum(CALM, cells / CONTRAST)  # what counts as background beside each cell
    line = (cells > BUSY) & (_calmest(cells, above=True) <= background) & (_calmest(cells, above=False) <= background)
    run = line.copy()
    for shift in range(1, RUN):
        run[:, :-shift] &= line[:, shift:]
        run[:, -shift:] = False
    return bool(run.any())


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
