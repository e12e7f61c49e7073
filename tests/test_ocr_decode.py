"""How OCR decodes a large JPEG: its detection pass reads a copy decoded at a fraction of the
photo's size (a 12 MP photo costs a quarter of its full decode), the full-size decode happens only
when that pass found text, and small text is still read from the full-size pixels."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFile, ImageFont

from recall_cli.models.mediatext import describe


def big_photo(path, words: str | None = None):
    """A 3200x2400 JPEG of a soft gradient, with a line of 40-px words when given (text that the
    960-px detection copy still holds, and recognition reads best at full size)."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(90, 200, 3200)[None, :, None] * np.ones((2400, 1, 3))
    image = Image.fromarray((ramp + rng.normal(0, 3, (2400, 3200, 3))).clip(0, 255).astype(np.uint8))
    if words:
        draw = ImageDraw.Draw(image)
        draw.rectangle((380, 1180, 1500, 1280), fill=(245, 245, 240))
        draw.text((400, 1200), words, fill=(10, 10, 10), font=ImageFont.load_default(size=40))
    image.save(path, quality=90)
    return path


def test_full_size_is_decoded_only_for_a_photo_with_text(tmp_path, monkeypatch):
    decoded = []  # (file, size) of each JPEG decode
    load = ImageFile.ImageFile.load

    def spy(image):
        pixels = load(image)
        decoded.append((image.filename.rsplit("/", 1)[-1], image.size))
        return pixels

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    monkeypatch.setenv("RECALL_OCR", "always")  # the detection pass on every photo, gate or not
    describe(big_photo(tmp_path / "plain.jpg"), "image")
    assert decoded and all(size[0] <= 1600 for _, size in decoded)  # 1/2 scale at most, never full
    decoded.clear()
    text = describe(big_photo(tmp_path / "sign.jpg", "invoice 4471 paid"), "image").text
    assert ("sign.jpg", (3200, 2400)) in decoded  # recognition reads the full-size pixels
    assert "invoice" in text and "4471" in text
