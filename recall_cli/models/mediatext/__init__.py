"""The text side of a photo, a song or a video: its name, what its metadata says, and the text
in it.

`describe(path, modality)` returns the text a model embeds (minilm) or stores beside the media
embedding (ImageBind), and the facts that become filterable columns (`meta_columns`): capture
date, camera, position and place, artist.  One module per source: `exif.py` (photos), `tags.py`
(audio tags), `video.py` (containers), `places.py` (GPS <-> city names, offline), `ocr.py` (text
in images).  Nothing here fails a file: a field that cannot be read is left out with a note.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from recall_cli.names import name_words

KIND_WORDS = {"image": "photo image picture", "audio": "audio recording", "video": "video"}
MAX_TEXT = 20_000  # characters of OCR text kept per image (a dense page is ~3000)


@dataclass
class MediaText:
    text: str  # what is embedded and searched for words
    meta: dict = field(default_factory=dict)  # facts, for filters, --json and stats (notes included)


def describe(path: Path, modality: str, decoded=None) -> MediaText:
    """`decoded`: the photo as the model decoded it (a lent.Photo), which OCR then reads instead of
    the file."""
    path = Path(path)
    facts, notes = _facts(path, modality)
    if "lat" in facts:
        try:
            from recall_cli.models.mediatext.places import place_name

            facts["place"] = place_name(facts["lat"], facts["lon"])
        except Exception as error:  # no place name is no reason to lose the position
            notes.append(f"place name unavailable ({type(error).__name__})")
    text_in_image = ""
    if modality == "image":
        text_in_image, note = read_image_text(path, decoded)
        if note:
            notes.append(note)
        if text_in_image:
            facts["ocr_chars"] = len(text_in_image)
    if notes:
        facts["notes"] = notes
    return MediaText(compose_text(path, modality, facts, text_in_image), facts)


def _facts(path: Path, modality: str) -> tuple[dict, list[str]]:
    if modality == "image":
        from recall_cli.models.mediatext.exif import read_exif

        return read_exif(path)
    if modality == "audio":
        from recall_cli.models.mediatext.tags import read_tags

        return read_tags(path)
    if modality == "video":
        from recall_cli.models.mediatext.video import read_container

        return read_container(path)
    return {}, []


def read_image_text(path: Path, decoded=None) -> tuple[str, str | None]:
    """(the text OCR reads in an image file, a note when it could not), as an index run reads it:
    the cheap text test first (textgate.py), then detection on the rows where it found lines, then
    recognition where text was found.  `decoded`: the file's photo already decoded (a lent.Photo),
    read instead of the file."""
    from recall_cli.models.mediatext import ocr

    if not ocr.enabled():
        return "", None
    if not ocr.available():
        return "", "OCR unavailable (rapidocr-onnxruntime is not installed)"
    try:
        text, left = _read_decoded(decoded, path) if decoded is not None else _read_file(path)
        note = f"OCR stopped after {ocr.time_limit():g} s ({left} lines left unread)" if left else None
        return text[:MAX_TEXT], note
    except Exception as error:  # an image OCR cannot read still has its name and metadata
        return "", f"OCR failed ({type(error).__name__})"


def _read_file(path: Path) -> tuple[str, int]:
    """OCR of a file no model has decoded: each pass opens it at the size it needs (a JPEG at a
    fraction of its size inside the DCT), so a photo without text is never decoded whole."""
    from PIL import Image

    from recall_cli.models.mediatext import ocr
    from recall_cli.models.mediatext.exif import _register_heif

    _register_heif()
    rows = None  # the whole image
    if ocr.gated():
        from recall_cli.models.mediatext.textgate import text_rows

        with Image.open(path) as image:
            rows = text_rows(image)
        if not rows:
            return "", 0  # a photo without text: a few ms, no detection pass
    with Image.open(path) as image:
        return ocr.read_text(image, rows, full_size=lambda: _full_size(path))


def _read_decoded(photo, path: Path) -> tuple[str, int]:
    """OCR of a photo already decoded and upright (a lent.Photo): the text test's and the detection
    pass's copies are reduced from its pixels; recognition reads them too when they are the file's
    full size, else the file decoded whole (small text is legible only there)."""
    from recall_cli.models.mediatext import ocr

    rows = None
    if ocr.gated():
        from recall_cli.models.mediatext.textgate import text_rows

        rows = text_rows(photo.image, upright=True)
        if not rows:
            return "", 0
    full_size = None if photo.whole else (lambda: _full_size(path))
    return ocr.read_text(photo.image, rows, full_size=full_size, upright=True)


def _full_size(path: Path):
    """The image for recognition: full resolution, or a JPEG at a fraction of its size when that is
    still 4096 px or more on its shorter side (a 50 MP photo's small text stays legible)."""
    from PIL import Image

    from recall_cli.models.mediatext.ocr import draft_at_least

    image = Image.open(path)
    draft_at_least(image, 0, 4096)
    return image


def compose_text(path: Path, modality: str, facts: dict, text_in_image: str = "") -> str:
    """One paragraph: kind, file and folder name words, what the metadata says, the text inside."""
    parts = [f"{name_words(str(path))} ({KIND_WORDS.get(modality, modality)})"]
    folder = name_words(path.parent.name) if path.parent.name else ""
    if folder:
        parts.append(f"in folder {folder}")
    if facts.get("taken_at"):
        taken = datetime.fromisoformat(facts["taken_at"])
        verb = "recorded" if modality != "image" else "taken"
        parts.append(f"{verb} {taken:%d %B %Y} ({taken:%Y-%m-%d}, {taken:%A})")
    if facts.get("place"):
        parts.append(f"at {facts['place']}")
    for key, label in (("camera", "camera"), ("lens", "lens"), ("title", "title"), ("artist", "by")):
        if facts.get(key):
            parts.append(f"{label} {facts[key]}")
    for key, label in (("album", "album"), ("genre", "genre"), ("year", "year")):
        if facts.get(key):
            parts.append(f"{label} {facts[key]}")
    text = "; ".join(parts)
    return f"{text}\n{text_in_image}" if text_in_image else text


def meta_columns(meta: dict | None) -> dict:
    """The table's metadata columns of a unit (all None for a file without media metadata)."""
    meta = meta or {}
    return {
        "taken_at": taken_timestamp(meta.get("taken_at")),
        "camera": meta.get("camera"),
        "lat": meta.get("lat"),
        "lon": meta.get("lon"),
        "place": meta.get("place"),
        "artist": meta.get("artist"),
        "meta": json.dumps(meta, ensure_ascii=False, sort_keys=True) if meta else None,
    }


def taken_timestamp(iso: str | None) -> float | None:
    """A capture date (naive, as the camera's clock said) as seconds since the epoch, read as UTC:
    the same convention the date filters use, so '2019-07-14' means that day on the camera."""
    if not iso:
        return None
    return datetime.fromisoformat(iso).replace(tzinfo=timezone.utc).timestamp()
