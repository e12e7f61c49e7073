"""The query language of `recall query` (standard library only: the warm client parses dates too).

* Plain text: `red kayak at sunset` is one term, weight 1.
* Weighted combinations in the style of rclip: quoted terms joined by `+` and `-`, each with an
  optional `WEIGHT:` prefix, e.g. `"beach" + "dog" - "people"`, `2:"dog" + 0.5:"cat"`,
  `"sea" - 0.5:"boat"`.  Single quotes work too; `\\"` escapes a quote inside a term.
  A query is read as a combination when it starts with a quote, a sign followed by a quote, or
  `WEIGHT:` followed by a quote; anything else is plain text (so `Grandma's pie` stays plain).
  The query vector is sum(weight_i * e_i) over the unit-norm term embeddings e_i, normalised.
* Words for the keyword side of a hybrid query (query/keyword.py): the plain text's words match
  loosely (BM25); a `"quoted phrase"` inside a plain query must appear as written, and so must an
  identifier joined by underscores (`indices_or_sections`: the index splits it into words, and
  any document holding those common words would otherwise match it too); `name:WORD` (or
  `name:"two words"`) must appear in the file's name and is not embedded.  A weighted combination
  of several terms is arithmetic on meanings, which words cannot do: it is searched by vector only
  (a single quoted term is a phrase, searched both ways).
* Dates for --since/--until: YYYY-MM-DD (local midnight; --until includes that whole day) or an
  ISO 8601 datetime (naive: local time).  Compared with the file's mtime.
* Media filters inside the query, the same filters as the flags (query/mediafilter.py), and not
  embedded: `taken:DATE` (YYYY, YYYY-MM, YYYY-MM-DD or an ISO datetime: that year, month, day or
  moment) or `taken:DATE..DATE` (either end may be left out) for --taken-after/--taken-before;
  `near:PLACE` or `near:LAT,LON[,KM]` for --near; `camera:TEXT` for --camera; `artist:TEXT` for
  --artist.  A value with spaces is quoted: `near:"Paris, FR 30km"`, `artist:"nina simone"`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

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


_NAME = re.compile(r"""(?<!\S)name:(?:"([^"]*)"|'([^']*)'|(\S+))""")
_PHRASE = re.compile(r'"([^"]*)"')
_SNAKE = re.compile(r"[^\W_]+(?:_+[^\W_]+)+")  # letters/digits joined by underscores


@dataclass(frozen=True)
class KeywordQuery:
    words: str = ""  # match loosely: any of them, ranked by BM25
    phrases: tuple[str, ...] = ()  # each must appear, word for word
    names: tuple[str, ...] = ()  # each must appear in the file's name

    @property
    def empty(self) -> bool:
        return not (self.words.strip() or self.phrases or self.names)


@dataclass(frozen=True)
class Query:
    terms: list[tuple[float, str]] = field(default_factory=list)  # the vector side; [] for names alone
    keyword: KeywordQuery = KeywordQuery()
    filters: dict = field(default_factory=dict)  # QueryOptions values from taken:/near:/camera:/artist:


_FILTER = re.compile(r"""(?<!\S)(taken|near|camera|artist):(?:"([^"]*)"|'([^']*)'|(\S+))""")


def read_filters(text: str) -> tuple[dict, str]:
    """The media filter terms of a query as QueryOptions values, and the query without them."""
    filters: dict = {}
    for match in _FILTER.finditer(text):
        key, value = match.group(1), next((part for part in match.groups()[1:] if part is not None), "").strip()
        if not value:
            raise RecallError(f"{key}: needs a value, e.g. {_FILTER_EXAMPLES[key]}")
        values = (
            dict(zip(("taken_after", "taken_before"), taken_range(value), strict=True))
            if key == "taken"
            else {key: value}  # near:, camera:, artist: are named as their QueryOptions fields
        )
        for option, given in values.items():
            if given is None:
                continue
            if filters.get(option, given) != given:
                raise RecallError(f"{key}: given twice with different values; give it once")
            filters[option] = given
    return filters, _FILTER.sub(" ", text)


_FILTER_EXAMPLES = {
    "taken": "taken:2019-07 or taken:2019-07-01..2019-08-15",
    "near": 'near:Lisbon, near:"Paris, FR 30km" or near:38.72,-9.14,5',
    "camera": "camera:iphone",
    "artist": 'artist:"nina simone"',
}


def taken_range(value: str) -> tuple[str | None, str | None]:
    """(taken after, taken before) of a `taken:` value: a year, month, day or moment is that whole
    span; `A..B` runs from A's start to B's end, and either end may be left out."""
    import calendar

    first, dots, last = value.partition("..")
    first, last = first.strip(), (last.strip() if dots else first.strip())
    if not first and not last:
        raise RecallError(f"taken:{value} has no date; use e.g. {_FILTER_EXAMPLES['taken']}")
    spans = []
    for part, end in ((first, False), (last, True)):
        if not part:
            spans.append(None)
            continue
        if re.fullmatch(r"\d{4}", part):
            part = f"{part}-12-31" if end else f"{part}-01-01"
        elif re.fullmatch(r"\d{4}-\d{2}", part) and 1 <= int(part[5:]) <= 12:
            days = calendar.monthrange(int(part[:4]), int(part[5:]))[1]
            part = f"{part}-{days:02d}" if end else f"{part}-01"
        try:
            parse_date(part, end=end, utc=True)
        except RecallError:
            raise RecallError(
                f"cannot read date {part!r} in taken:{value}; use YYYY, YYYY-MM, YYYY-MM-DD or an ISO datetime"
            ) from None
        spans.append(part)
    return spans[0], spans[1]


def read_query(text: str) -> Query:
    """Both sides of one query: the weighted terms to embed and the words to look up, and the
    media filters it names."""
    filters, text = read_filters(text)
    if filters and not text.strip():
        raise RecallError(
            "a query of filters alone has nothing to rank by; add words, e.g. 'photo taken:2019 near:Lisbon'"
        )
    query = _read_terms(text)
    return Query(query.terms, query.keyword, filters) if filters else query


def _read_terms(text: str) -> Query:
    names = tuple(" ".join(part for part in match.groups() if part) for match in _NAME.finditer(text))
    names = tuple(name for name in names if name.strip())
    rest = _NAME.sub(" ", text)
    if is_weighted(rest):
        terms = _weighted_or_none(rest)
        if terms is not None:
            if len(terms) == 1:  # one quoted term: a phrase, on both sides
                return Query(terms, KeywordQuery(phrases=(terms[0][1],), names=names))
            # arithmetic on meanings (`"beach" + "dog" - "people"`): words cannot say "minus"
            return Query(terms, KeywordQuery(names=names))
    phrases = tuple(phrase.strip() for phrase in _PHRASE.findall(rest) if phrase.strip())
    plain = " ".join(_PHRASE.sub(lambda match: match.group(1), rest).split())
    if not plain and not names:
        raise RecallError("empty query; say what to look for")
    loose = _PHRASE.sub(" ", rest)
    phrases += tuple(_SNAKE.findall(loose))
    words = " ".join(_SNAKE.sub(" ", loose).split())
    return Query([(1.0, plain)] if plain else [], KeywordQuery(words, phrases, names))


def _weighted_or_none(text: str) -> list[tuple[float, str]] | None:
    """The weighted combination, or None for plain text that merely starts with a quoted phrase
    (`"red kayak" lake`): only signs or weights between quoted terms make a combination."""
    try:
        return parse_query(text)
    except RecallError as error:
        if "expected + or - between terms" in str(error):
            return None
        raise


def parse_date(text: str, end: bool = False, utc: bool = False) -> int:
    """Nanoseconds since the epoch for --since (end False) / --until (end True); `utc`: a naive
    date or time is read as UTC (capture dates: a camera's clock has no time zone)."""
    from datetime import datetime, timedelta, timezone

    raw = str(text).strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
            moment = datetime.strptime(raw, "%Y-%m-%d")
            if utc:
                moment = moment.replace(tzinfo=timezone.utc)
            if end:
                if moment.date() == moment.date().max:  # `--until 9999-12-31`: no next day
                    return 2**63 - 1
                return _clamp(_nanoseconds(moment + timedelta(days=1)) - 1)
        else:
            moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            if utc and moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
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
