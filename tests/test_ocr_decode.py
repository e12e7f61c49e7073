"""How OCR decodes a large JPEG: its detection pass reads a copy decoded at a fraction of the
photo's size (a 12 MP photo costs half of its full decode), the full-size decode happens only
when that pass found text, and small text is still read from the full-size pixels.  With a model
that decodes the photo anyway (ImageBind, at a DCT scale as large as OCR's own), OCR reads that
decode: a photo without text is decoded once, never whole."""

from __future__ import annotations

import json

import numpy as np
from conftest import Cli
from PIL import Image, ImageDraw, ImageFile, ImageFont

from recall_cli.models.mediatext import describe


def big_photo(path, words: str | None = None, sideways: bool = False, size: int = 40):
    """A 3200x2400 JPEG of a soft gradient, with a line of `size`-px words when given (40 px: text
    that the 960-px detection copy still holds, and recognition reads best at full size).
    `sideways`: stored turned a quarter, with the EXIF orientation (6) that shows it upright, as a
    phone held upright."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(90, 200, 3200)[None, :, None] * np.ones((2400, 1, 3))
    image = Image.fromarray((ramp + rng.normal(0, 3, (2400, 3200, 3))).clip(0, 255).astype(np.uint8))
    if words:
        draw = ImageDraw.Draw(image)
        font = ImageFont.load_default(size=size)
        left, top, right, bottom = draw.textbbox((400, 1200), words, font=font)
        draw.rectangle((left - size, top - size, right + size, bottom + size), fill=(245, 245, 240))
        draw.text((400, 1200), words, fill=(10, 10, 10), font=font)
    if sideways:
        exif = Image.Exif()
        exif[0x0112] = 6  # shown turned a quarter clockwise
        image.rotate(90, expand=True).save(path, quality=90, exif=exif)
    else:
        image.save(path, quality=90)
    return path


def decode_spy(monkeypatch) -> list:
    """(file, size) of every image decode from now on, in this process."""
    decoded = []
    load = ImageFile.ImageFile.load

    def spy(image):
        if image.tile:  # not decoded yet (load() again is a no-op)
            decoded.append((image.filename.rsplit("/", 1)[-1], image.size))
        return load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return decoded


def test_full_size_is_decoded_only_for_a_photo_with_text(tmp_path, monkeypatch):
    decoded = decode_spy(monkeypatch)
    monkeypatch.setenv("RECALL_OCR", "always")  # the detection pass on every photo, gate or not
    describe(big_photo(tmp_path / "plain.jpg"), "image")
    assert decoded and all(size[0] <= 1600 for _, size in decoded)  # 1/2 scale at most, never full
    decoded.clear()
    text = describe(big_photo(tmp_path / "sign.jpg", "invoice 4471 paid"), "image").text
    assert ("sign.jpg", (3200, 2400)) in decoded  # recognition reads the full-size pixels
    assert "invoice" in text and "4471" in text


def test_large_text_is_read_without_decoding_the_photo_whole(tmp_path, monkeypatch):
    """Lines at least as tall in the half-size decode as the recogniser reads them (48 px) are
    read from it: the full-size decode would only be reduced again."""
    decoded = decode_spy(monkeypatch)
    text = describe(big_photo(tmp_path / "poster.jpg", "kayak rental 2019", size=160), "image").text
    assert "kayak" in text and "rental" in text and "2019" in text
    assert decoded and all(size[0] <= 1600 for _, size in decoded)  # never the full 3200x2400


def test_ocr_reads_the_photo_imagebind_decoded_instead_of_the_file(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    root.mkdir()
    big_photo(root / "plain.jpg")
    big_photo(root / "receipt.jpg", "invoice 4471 paid", sideways=True)
    decoded = decode_spy(monkeypatch)
    cli = Cli(tmp_path / "db")
    assert cli("index", root, "--model", "imagebind-test").exit_code == 0
    # each photo decoded once at half size (the model's decode): no other copy for the text test or
    # the detection pass; the receipt decoded whole as well, for recognition of the text found
    assert sorted(decoded) == [
        ("plain.jpg", (1600, 1200)),
        ("receipt.jpg", (1200, 1600)),
        ("receipt.jpg", (2400, 3200)),
    ]
    result = cli("query", "4471", "--keyword", "--json")
    assert [row["path"].rsplit("/", 1)[-1] for row in json.loads(result.stdout)] == ["receipt.jpg"]
    # read the right way up, from the photo as seen (a sideways copy reads nothing)
    assert "invoice" in json.loads(result.stdout)[0]["snippet"]


def test_a_decoded_photo_is_kept_only_inside_the_block_that_lends_it(tmp_path):
    from recall_cli.models.imagebind.media.image import load_image
    from recall_cli.models.mediatext import lent

    path = big_photo(tmp_path / "a.jpg")
    with lent.lend(tmp_path / "other.jpg") as slot:
        load_image(path)
        assert slot["photo"] is None  # another file's block keeps nothing of this one
    with lent.lend(path) as slot:
        load_image(path)
        assert slot["photo"].image.size == (1600, 1200) and not slot["photo"].whole
    assert slot["photo"] is None  # 6 MB not held once the block ends
