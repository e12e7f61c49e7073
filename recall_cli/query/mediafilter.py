"""Filters on media metadata (`--taken-after/--taken-before`, `--camera`, `--near`, `--artist`) as
clauses on the table's metadata columns (storage/table.py), and the `meta` object of a result.

Capture dates are the camera's clock (no time zone), stored as if UTC; a date given to
--taken-after is read the same way, so "2019-07-14" means that day on the camera.  A file without
a capture date is judged by its modification time instead, and its result says so
(`meta.date_source` is "file").
"""

from __future__ import annotations

import json
import math
import re

from recall_cli.errors import RecallError

KM_PER_DEGREE = 111.195  # of latitude; of longitude times cos(latitude)
_LAT_LON = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*,\s*([+-]?\d+(?:\.\d+)?)\s*(?:,\s*(\d+(?:\.\d+)?)\s*(?:km)?)?\s*$")


def uses_media_filters(options) -> bool:
    return any((options.taken_after, options.taken_before, options.camera, options.near, options.artist))


def media_clauses(options) -> list[str]:
    """SQL clauses for the media filters of `options` (none set: [])."""
    from recall_cli.storage.sqlfilter import sql_str

    clauses = []
    if options.taken_after or options.taken_before:
        clauses.append(_taken_clause(options.taken_after, options.taken_before))
    if options.camera:
        clauses.append(f"regexp_like(camera, {sql_str('(?i)' + re.escape(options.camera.strip()))})")
    if options.artist:
        clauses.append(f"regexp_like(artist, {sql_str('(?i)' + re.escape(options.artist.strip()))})")
    if options.near:
        clauses.append(near_clause(options.near))
    return clauses


def _taken_clause(after: str | None, before: str | None) -> str:
    from recall_cli.query.language import parse_date

    taken, modified = [], []
    if after:
        taken.append(f"taken_at >= {parse_date(after, utc=True) / 1e9!r}")
        modified.append(f"mtime_ns >= {parse_date(after)}")
    if before:
        taken.append(f"taken_at <= {parse_date(before, end=True, utc=True) / 1e9!r}")
        modified.append(f"mtime_ns <= {parse_date(before, end=True)}")
    return f"(({' AND '.join(taken)}) OR (taken_at IS NULL AND {' AND '.join(modified)}))"


def near_clause(text: str) -> str:
    """Within a radius of a position or of every city of that name: an equirectangular distance
    (exact enough below a few hundred km, and plain arithmetic the table's filter can run)."""
    centres, radius = near_centres(text)
    return "(" + " OR ".join(_circle(lat, lon, radius) for lat, lon, _ in centres) + ")"


def near_centres(text: str) -> tuple[list[tuple[float, float, str]], float]:
    """([(lat, lon, label)], radius km) of --near: 'LAT,LON[,KM]' or a place name ('Lisbon',
    'Paris, FR', with an optional ' 30km' at the end for the radius)."""
    from recall_cli.models.mediatext.places import NEAR_KM, find_places

    match = _LAT_LON.match(text)
    if match:
        lat, lon = float(match.group(1)), float(match.group(2))
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise RecallError(f"--near {text!r}: latitude must be within -90..90 and longitude within -180..180")
        return [(lat, lon, f"{lat},{lon}")], float(match.group(3) or NEAR_KM)
    radius = NEAR_KM
    named = re.match(r"^(.*?)\s+(\d+(?:\.\d+)?)\s*km\s*$", text.strip())
    name = named.group(1) if named else text.strip()
    if named:
        radius = float(named.group(2))
    centres = find_places(name)
    if not centres:
        raise RecallError(
            f"--near {text!r}: no city of that name is known; try 'City, CC' (country code) or 'LAT,LON[,KM]'"
        )
    return centres, radius


def _circle(lat: float, lon: float, radius_km: float) -> str:
    lat_span = radius_km / KM_PER_DEGREE
    lon_scale = max(math.cos(math.radians(lat)), 0.01)
    lon_span = lat_span / lon_scale
    box = (
        f"lat BETWEEN {lat - lat_span!r} AND {lat + lat_span!r} "
        f"AND lon BETWEEN {lon - lon_span!r} AND {lon + lon_span!r}"
    )
    distance = (
        f"(lat - {lat!r}) * (lat - {lat!r}) + ({lon_scale!r} * (lon - {lon!r})) * ({lon_scale!r} * (lon - {lon!r}))"
    )
    return f"({box} AND {distance} <= {lat_span * lat_span!r})"


def result_meta(row: dict) -> dict:
    """The `meta` object of a result: its media metadata, with where its date comes from (a file
    without a capture date is dated by its modification time)."""
    try:
        meta = json.loads(row.get("meta") or "{}")
    except ValueError:
        meta = {}
    meta["date_source"] = "capture" if meta.get("taken_at") else "file"
    return meta
