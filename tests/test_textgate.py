"""The cheap "is there text here?" test in front of OCR (models/mediatext/textgate.py): text of
several sizes, inks and backgrounds passes it, photos without text do not, and a photo it turns
away never reaches the detection pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mediafiles import photo, text_image
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from recall_cli.models.mediatext import describe, ocr
from recall_cli.models.mediatext.textgate import gate_copy, might_hold_text, text_rows


def gate(path: Path) -> bool:
    with Image.open(path) as image:
        return might_hold_text(gate_copy(image))


def scene(size=(1600, 1200), seed=0) -> Image.Image:
    """A photo-like scene without text: a sky gradient over blurred hills and soft noise."""
    rng = np.random.default_rng(seed)
    width, height = size
    rows = np.linspace(0, 1, height)[:, None, None]
    sky = np.array([110, 160, 225]) * (1 - rows) + np.array([60, 120, 60]) * rows
    hills = np.sin(np.linspace(0, 6, width))[None, :, None] * 25 * (rows > 0.55)
    pixels = sky + hills + rng.normal(0, 4, (height, width, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2))


def sign(path: Path, size: int, seed: int, panel: bool) -> Path:
    """A 1600x1200 JPEG photo with one line of text on it, on a panel (a sign) or straight on the scene."""
    image = scene(seed=seed)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=size)
    words = "platform 4 departures to porto"
    if panel:
        draw.rectangle((590, 690, 610 + draw.textlength(words, font=font), 710 + size * 1.4), fill=(240, 240, 235))
    draw.text((600, 700), words, fill=(20, 20, 20) if panel else (250, 250, 250), font=font)
    image.save(path, quality=85)
    return path


@pytest.mark.parametrize("size", [14, 20, 32])
@pytest.mark.parametrize(
    "background,ink", [("white", "black"), ((35, 40, 50), (235, 235, 235)), ((250, 240, 205), (90, 80, 70))]
)
def test_rendered_text_passes(tmp_path, size, background, ink):
    path = text_image(tmp_path / "t.png", ["Total due 120 EUR", "invoice 4471"], size, background, ink)
    assert gate(path)
    jpeg = tmp_path / "t.jpg"
    Image.open(path).save(jpeg, quality=75)
    assert gate(jpeg)


@pytest.mark.parametrize("size,panel", [(14, True), (18, False), (40, True), (60, False)])
def test_text_in_a_photo_passes(tmp_path, size, panel):
    assert gate(sign(tmp_path / "sign.jpg", size, seed=size, panel=panel))


def test_photos_without_text_do_not_pass(tmp_path):
    for seed in range(3):
        scene(seed=seed).save(tmp_path / f"scene{seed}.jpg", quality=88)
        assert not gate(tmp_path / f"scene{seed}.jpg")
        assert not gate(photo(tmp_path / f"smooth{seed}.jpg", seed=seed, size=(1600, 1200)))


def plate(seed: int) -> Image.Image:
    """A plate on a table, seen from above at an angle: a dark rim (one edge up, one down, never
    strokes) with calm table and calm plate on either side, where the cell test alone saw a line."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (1600, 1200), tuple(int(v) for v in rng.uniform(100, 200, 3)))
    draw = ImageDraw.Draw(image)
    x, y, width = rng.uniform(100, 400), rng.uniform(100, 300), rng.uniform(800, 1100)
    height = width * rng.uniform(0.5, 0.7)
    draw.ellipse((x, y, x + width, y + height), outline=(30, 30, 30), width=14)
    draw.ellipse((x + 100, y + 80, x + width - 100, y + height - 80), fill=(230, 230, 220))
    return image.filter(ImageFilter.GaussianBlur(1))


def test_the_edge_of_an_object_is_not_a_line_of_text(tmp_path):
    for seed in range(6):
        plate(seed).save(tmp_path / f"plate{seed}.jpg", quality=88)
        assert not gate(tmp_path / f"plate{seed}.jpg"), seed


@pytest.mark.parametrize("seed", range(3))
def test_big_letters_on_a_small_photo_pass(tmp_path, seed):
    """Letters taller than the rows the gate looks through for calm background (56 px on a
    640x480 photo, read at full size): found at half scale."""
    image = scene((640, 480), seed=seed)
    ImageDraw.Draw(image).text(
        (40, 200), "invoice 4471 paid", fill=(250, 250, 250), font=ImageFont.load_default(size=56)
    )
    image.save(tmp_path / "big.jpg", quality=88)
    assert gate(tmp_path / "big.jpg")


def test_a_photo_turned_away_never_reaches_the_detection_pass(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ocr, "read_text", lambda image, rows=None, **_: calls.append(image.size) or ("", 0))
    plain = photo(tmp_path / "plain.jpg", seed=1, size=(1600, 1200))
    describe(plain, "image")
    assert calls == []
    describe(sign(tmp_path / "sign.jpg", 20, seed=2, panel=True), "image")
    assert calls == [(1600, 1200)]
    monkeypatch.setenv("RECALL_OCR", "always")  # the setting that runs detection on every image
    describe(plain, "image")
    assert len(calls) == 2


def test_detection_reads_only_the_rows_around_the_lines(tmp_path, monkeypatch):
    """A sign in a photo: the detection pass reads a band of rows around its line (not the whole
    photo), and the words are read from it."""
    path = sign(tmp_path / "sign.jpg", 28, seed=3, panel=True)  # the line at y 700-740 of 1200
    with Image.open(path) as image:
        rows = text_rows(image)
    assert rows and sum(end - start for start, end in rows) < 0.5
    assert any(start * 1200 <= 700 and end * 1200 >= 740 for start, end in rows)
    bands_read = []
    detect = ocr._detect
    monkeypatch.setattr(ocr, "_detect", lambda det, small, bands: bands_read.append(bands) or detect(det, small, bands))
    text = describe(path, "image").text
    assert bands_read == [rows]
    assert "departures" in text and "porto" in text


def test_a_sideways_photo_is_read_upright(tmp_path):
    """A phone photo stored sideways with EXIF orientation 6: the gate passes it, OCR reads it upright."""
    image = Image.new("RGB", (1200, 300), "white")
    ImageDraw.Draw(image).text((40, 100), "Corner Bakery 4471", fill="black", font=ImageFont.load_default(size=64))
    stored = image.rotate(90, expand=True)  # what the sensor saw; orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "IMG_1.jpg", exif=exif, quality=90)
    assert gate(tmp_path / "IMG_1.jpg")
    text = describe(tmp_path / "IMG_1.jpg", "image").text
    assert "Bakery" in text and "4471" in text
