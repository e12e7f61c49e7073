"""What a video container says: when it was recorded, how long it runs, where (ISO 6709 location
as phones write it), and its title.  Read with PyAV, without decoding a frame."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from recall_cli.models.mediatext.exif import EARLIEST_YEAR, valid_coordinates

# What ffmpeg may do with a file (here and in every decoder): read it from disk (no network, no
# other protocol) and parse it with a container demuxer (never a playlist or concat script, which
# would open other files).
FFMPEG_INPUT_OPTIONS = {
    "protocol_whitelist": "file",
    "format_whitelist": "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,ogg,mp3,wav,w64,flac,aac,aiff,"
    "asf,mpeg,mpegts,mpegvideo,m4v,h264,hevc,caf,amr,au,wv,ape,tta,dts,ac3,eac3",
}
LOCATION_KEYS = ("location", "com.apple.quicktime.location.ISO6709", "location-eng")
ISO6709 = re.compile(r"^([+-]\d+(?:\.\d+)?)([+-]\d+(?:\.\d+)?)")


def read_container(path: Path) -> tuple[dict, list[str]]:
    """({taken_at, duration, lat, lon, title, artist} present in the container, notes)."""
    try:
        import av

        with av.open(str(path), options=FFMPEG_INPUT_OPTIONS) as container:
            metadata = dict(container.metadata)
            duration = container.duration
    except Exception as error:  # unreadable container: the sniffer or the encoder says more
        return {}, [f"video metadata unreadable ({type(error).__name__})"]
    facts: dict = {}
    notes: list[str] = []
    if duration and duration > 0:
        facts["duration"] = round(duration / 1_000_000, 1)
    created = metadata.get("creation_time")
    if created:
        taken = parse_creation_time(created)
        if taken is None:
            notes.append(f"creation time {created[:30]!r} ignored (not a real date)")
        else:
            facts["taken_at"] = taken.isoformat(timespec="seconds")
    for key in LOCATION_KEYS:
        if metadata.get(key):
            facts.update(_location(metadata[key], notes))
            break
    for key in ("title", "artist"):
        if metadata.get(key):
            facts[key] = " ".join(metadata[key].split())[:200]
    return facts, notes


def parse_creation_time(text: str) -> datetime | None:
    """ISO 8601 as containers write it ('2021-05-01T12:00:00.000000Z'), as naive UTC."""
    try:
        taken = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if taken.tzinfo is not None:
        from datetime import timezone

        taken = taken.astimezone(timezone.utc).replace(tzinfo=None)
    if not EARLIEST_YEAR <= taken.year <= datetime.now().year + 1 or taken.year == 1904 and taken.month == 1:
        return None  # QuickTime's epoch (1904-01-01) means "never set"
    return taken


def _location(text: str, notes: list[str]) -> dict:
    match = ISO6709.match(text.strip())
    if not match:
        notes.append(f"location {text[:30]!r} ignored (not ISO 6709)")
        return {}
    lat, lon = float(match.group(1)), float(match.group(2))
    if not valid_coordinates(lat, lon):
        notes.append(f"GPS position ({lat:.4g}, {lon:.4g}) ignored (out of range)")
        return {}
    return {"lat": round(lat, 6), "lon": round(lon, 6)}
