"""The query language of `recall query` (standard library only: the warm client parses dates too).

* Plain text: `red kayak at sunset` is one term, weight 1.
* Weighted combinations in the style of rclip: quoted terms joined by `+` and `-`, each with an
  optional `WEIGHT:` prefix, e.g. `"beach" + "dog" - "people"`, `2:"dog" + 0.5:"cat"`,
  `"sea" - 0.5:"boat"`.  Single quotes work too; `\\"` escapes a quote inside a term.
  A query is read as a combination when it starts with a quote, a sign followed by a quote, or
  `WEIGHT:` followed by a quote; anything else is plain text (so `Grandma's pie` stays plain).
  The query vector is sum(weight_i * e_i) over the unit-norm term embeddings e_i, normalised.
* Dates for --since/--until: YYYY-MM-DD (local midnight; --until includes that whole day) or an
  ISO 8601 datetime (naive: local time).  Compared with the file's mtime.
"""

from __future__ import annotations

import math
import re

from recall_cli.errors import RecallError

_WEIGHTED_START = re.compile(r"""^\s*(?:[+-]\s*)?(?:\d+(?:\.\d*)?|\.\d+)?\s*:?\s*["']""")
_WEIGHT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*:")


def is_weighted(text: str) -> bool:
    stripped = text.lstrip()
    if not stripped:
        return False
    match = _WEIGHTED_START.match(stripped)
    if not match:
        return False
    head = match.group(0)
    # a bare number then a quote without ':' (e.g. `2"`) is not a weight: treat as plain text
    return ":" in head or head.strip().lstrip("+-").strip()[:1] in ("'", '"')


def parse_query(text: str) -> list[tuple[float, str]]:
    """[(weight, term text)] for one query (see the module docstring).  Raises RecallError with
    one line on malformed combinations."""
    if not is_weighted(text):
        if not text.strip():
            raise RecallError("empty query; say what to look for")
        return [(1.0, text.strip())]
    terms: list[tuple[float, str]] = []
    position, length = 0, len(text)

    def error(message: str) -> RecallError:
        return RecallError(
            f"cannot read query {text!r}: {message} at character {position + 1} "
            '(use e.g. \'"beach" + 2:"dog" - "people"\')'
        )

    def skip_spaces() -> None:
        nonlocal position
        while position < length and text[position].isspace():
            position += 1

    while True:
        skip_spaces()
        sign = 1.0
        if position < length and text[position] in "+-":
            sign = -1.0 if text[position] == "-" else 1.0
            position += 1
            skip_spaces()
        elif terms:
            raise error("expected + or - between terms")
        weight = 1.0
        match = _WEIGHT.match(text, position)
        if match:
            weight = float(match.group(1))
            if not math.isfinite(weight):  # 400 digits read as inf: the query vector would be NaN
                raise error("weight too large")
            position = match.end()
            skip_spaces()
        if position >= length or text[position] not in "\"'":
            raise error("expected a quoted term")
        quote = text[position]
        position += 1
        chars = []
        while position < length and text[position] != quote:
            if text[position] == "\\" and position + 1 < length:
                position += 1
            chars.append(text[position])
            position += 1
        if position >= length:
            raise error("unterminated quote")
        position += 1
        term = "".join(chars).strip()
        if not term:
            raise error("empty term")
        terms.append((sign * weight, term))
        skip_spaces()
        if position >= length:
            break
    if all(weight == 0 for weight, _ in terms):
        raise RecallError(f"cannot read query {text!r}: every weight is zero")
    return terms


def parse_date(text: str, end: bool = False) -> int:
    """Nanoseconds since the epoch for --since (end False) / --until (end True)."""
    from datetime import datetime, timedelta

    raw = str(text).strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
            moment = datetime.strptime(raw, "%Y-%m-%d")
            if end:
                if moment.date() == moment.date().max:  # `--until 9999-12-31`: no next day
                    return 2**63 - 1
                return _clamp(_nanoseconds(moment + timedelta(days=1)) - 1)
        else:
            moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        raise RecallError(
            f"cannot read date {text!r}; use YYYY-MM-DD or an ISO datetime like 2024-05-01T14:30"
        ) from None
    return _clamp(_nanoseconds(moment))


def _nanoseconds(moment) -> int:
    try:
        return int(round(moment.timestamp() * 1e6)) * 1000
    except (OverflowError, OSError, ValueError):  # year 1 or 9999 in local time: past int64 anyway
        return -(2**63) if moment.year < 1970 else 2**63 - 1


def _clamp(ns: int) -> int:
    """mtime_ns is an int64 column: dates past 2262 (or before 1677) are its ends."""
    return max(-(2**63), min(2**63 - 1, ns))
