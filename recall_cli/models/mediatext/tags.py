"""What a song or recording says about itself: title, artist, album, year, genre, duration.

mutagen reads ID3 (MP3), Vorbis comments (FLAC, Ogg), MP4 atoms (M4A) and more through one
"easy" interface.  A truncated tag block or an absurd year is dropped with a note.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

FIELDS = ("title", "artist", "album", "genre")


def read_tags(path: Path) -> tuple[dict, list[str]]:
    """({title, artist, album, genre, year, duration} for what is present, notes on what is not sane)."""
    try:
        import mutagen

        audio = mutagen.File(path, easy=True)
    except Exception as error:  # a broken tag block: the file still has its name (and its sound)
        return {}, [f"audio tags unreadable ({type(error).__name__})"]
    if audio is None:
        return {}, []
    facts: dict = {}
    notes: list[str] = []
    tags = audio.tags or {}
    for field in FIELDS:
        value = _first(tags, field)
        if value:
            facts[field] = value
    raw_year = _first(tags, "date") or _first(tags, "originaldate")
    if raw_year:
        year = parse_year(raw_year)
        if year is None:
            notes.append(f"tag year {raw_year[:20]!r} ignored (not a real year)")
        else:
            facts["year"] = year
    length = getattr(audio.info, "length", None)
    if length and length > 0:
        facts["duration"] = round(float(length), 1)
    return facts, notes


def _first(tags, key: str) -> str:
    try:
        values = tags.get(key) or []
    except Exception:  # mutagen raises on keys a format cannot hold; that field is simply absent
        return ""
    if isinstance(values, str):
        values = [values]
    text = " ".join(str(values[0]).replace("\x00", " ").split()) if values else ""
    return text[:200]


def parse_year(text: str) -> int | None:
    digits = text.strip()[:4]
    if not (len(digits) == 4 and digits.isdigit()):
        return None
    year = int(digits)
    return year if 1000 <= year <= datetime.now().year + 1 else None
