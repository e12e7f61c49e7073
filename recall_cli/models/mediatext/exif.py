"""What a photo's EXIF says: when it was taken, with which camera and lens, and where (GPS).

Pillow reads it (HEIC through pillow-heif).  Every field is read on its own: a corrupt block, an
absurd date or GPS out of range drops that field with a note, never the file.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

EXIF_IFD = 0x8769
GPS_IFD = 0x8825
MAKE, MODEL, DATETIME = 0x010F, 0x0110, 0x0132
DATETIME_ORIGINAL, DATETIME_DIGITIZED, LENS_MODEL = 0x9003, 0x9004, 0xA434
GPS_LAT_REF, GPS_LAT, GPS_LON_REF, GPS_LON = 1, 2, 3, 4
EARLIEST_YEAR = 1826  # the oldest surviving photograph: an earlier capture date is a broken clock


def read_exif(path: Path) -> tuple[dict, list[str]]:
    """({taken_at, camera, lens, lat, lon} for the fields present and sane, notes on the others)."""
    import warnings

    notes: list[str] = []
    facts: dict = {}
    with warnings.catch_warnings(record=True) as caught:  # Pillow warns, and skips, on corrupt tags
        warnings.simplefilter("always")
        try:
            exif = _open_exif(path)
        except Exception as error:  # any decoder failure: the photo still has its name and pixels
            return {}, [f"EXIF unreadable ({type(error).__name__})"]
        for read in (_taken_at, _camera, _gps):
            try:
                facts.update(read(exif, notes))
            except Exception as error:  # one broken field (a truncated IFD, a bad rational) is skipped
                notes.append(f"EXIF field ignored ({read.__name__.strip('_')}: {type(error).__name__})")
    corrupt = [
        str(warning.message)
        for warning in caught
        if "exif" in str(warning.message).lower() or "tag" in str(warning.message).lower()
    ]
    if corrupt:
        notes.append(f"EXIF partly corrupt, some fields ignored ({corrupt[0].strip()[:60]})")
    return facts, notes


def _open_exif(path: Path):
    from PIL import Image

    _register_heif()
    with Image.open(path) as image:
        return image.getexif()


def _register_heif() -> None:
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return
    register_heif_opener()


def _taken_at(exif, notes: list[str]) -> dict:
    details = exif.get_ifd(EXIF_IFD)
    for raw in (details.get(DATETIME_ORIGINAL), details.get(DATETIME_DIGITIZED), exif.get(DATETIME)):
        if not raw:
            continue
        taken = parse_exif_date(str(raw))
        if taken is None:
            notes.append(f"capture date {str(raw)[:24]!r} ignored (not a real date)")
            continue
        return {"taken_at": taken.isoformat(timespec="seconds")}
    return {}


def parse_exif_date(text: str) -> datetime | None:
    """'YYYY:MM:DD HH:MM:SS' (the EXIF form; '-' also accepted) as a naive local time, or None when
    it is not a date a camera could have recorded (0000:00:00, the future, before photography)."""
    text = text.strip().replace("\x00", "")
    for pattern in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y:%m:%d"):
        try:
            taken = datetime.strptime(text[: len(pattern) + 2].strip(), pattern)
            break
        except ValueError:
            continue
    else:
        return None
    if not EARLIEST_YEAR <= taken.year <= datetime.now().year + 1:
        return None
    return taken


def _camera(exif, notes: list[str]) -> dict:
    make = _clean(exif.get(MAKE))
    model = _clean(exif.get(MODEL))
    if model and make and model.lower().startswith(make.split()[0].lower()):
        make = ""  # "Canon" + "Canon EOS 5D": say it once
    facts = {}
    camera = " ".join(part for part in (make, model) if part)
    if camera:
        facts["camera"] = camera
    lens = _clean(exif.get_ifd(EXIF_IFD).get(LENS_MODEL))
    if lens:
        facts["lens"] = lens
    return facts


def _clean(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return " ".join(str(value).replace("\x00", " ").split())[:80]


def _gps(exif, notes: list[str]) -> dict:
    gps = exif.get_ifd(GPS_IFD)
    if not gps or GPS_LAT not in gps or GPS_LON not in gps:
        return {}
    lat = _degrees(gps[GPS_LAT], gps.get(GPS_LAT_REF), "S")
    lon = _degrees(gps[GPS_LON], gps.get(GPS_LON_REF), "W")
    if not valid_coordinates(lat, lon):
        notes.append(f"GPS position ({lat:.4g}, {lon:.4g}) ignored (out of range)")
        return {}
    return {"lat": round(lat, 6), "lon": round(lon, 6)}


def _degrees(value, ref, negative: str) -> float:
    degrees, minutes, seconds = (float(part) for part in value)
    result = degrees + minutes / 60 + seconds / 3600
    ref = ref.decode() if isinstance(ref, bytes) else str(ref or "")
    return -result if ref.strip().upper().startswith(negative) else result


def valid_coordinates(lat: float, lon: float) -> bool:
    """On the globe, and not exactly (0, 0): the null island where unset receivers put photos."""
    import math

    if not (math.isfinite(lat) and math.isfinite(lon)):
        return False
    return -90 <= lat <= 90 and -180 <= lon <= 180 and (lat, lon) != (0.0, 0.0)
