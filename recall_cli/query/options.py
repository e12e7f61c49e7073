"""The options of `recall query`, defined once for the three ways a query is asked: the command
line (Typer), the fast path that sends `recall query ...` to a running server before Typer is even
imported, and the server's JSON requests.  An option added here reaches all three; a test checks
that the command line's spellings and this table agree.

Standard library only: the fast path must not pay for numpy, torch or lancedb.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields

REFINE_MODES = ("auto", "exact", "off")
MODES = ("hybrid", "semantic", "keyword")  # both rankings fused (default), vectors only, words only


@dataclass(frozen=True)
class QueryOptions:
    limit: int = 10
    offset: int = 0
    modality: str | None = None  # only this modality
    within: str | None = None  # only files under this directory (absolute, resolved)
    like: str | None = None  # a file whose embedding is (part of) the query (absolute)
    since: str | None = None  # only files modified at or after this date (query.language.parse_date)
    until: str | None = None  # ... at or before this date
    min_score: float | None = None  # drop results scoring below this
    refine: str = "auto"  # auto (within budget) | exact (every candidate) | off
    budget: float | None = None  # refinement latency budget in seconds (None: refine.DEFAULT_BUDGET_S)
    mode: str = "hybrid"  # one of MODES
    name: str | None = None  # only files whose name matches this glob (any case)
    taken_after: str | None = None  # capture date (else file time) at or after this date
    taken_before: str | None = None  # ... at or before this date
    camera: str | None = None  # camera make or model contains this (any case)
    near: str | None = None  # within a radius of a place: "Lisbon", "Paris, FR" or "lat,lon[,km]"
    artist: str | None = None  # artist contains this (any case)
    device: str | None = None  # where the query encoder runs; never sent to a server (it has its own)
    weights: str | None = None

    def to_request(self) -> dict:
        """The options a server needs, as JSON values (device and weights are the server's own)."""
        return {key: value for key, value in asdict(self).items() if key not in LOCAL_ONLY}

    @classmethod
    def from_request(cls, payload: dict) -> QueryOptions:
        """Options from a server request; a missing key keeps its default, a wrong type is a
        ValueError (the server answers it as an error, never crashes)."""
        values = {}
        for field in fields(cls):
            if field.name not in LOCAL_ONLY and payload.get(field.name) is not None:
                values[field.name] = _typed(field.name, payload[field.name])
        return cls(**values)

    def with_filters(self, filters: dict) -> QueryOptions:
        """These options with the media filters a query names (`taken:`, `near:`, `camera:`,
        `artist:`; query/language.py): a term fills an option its flag left empty, and the same
        filter given both ways with different values is an error."""
        from dataclasses import replace

        from recall_cli.errors import RecallError

        for option, value in filters.items():
            flag = getattr(self, option)
            if flag is not None and flag != value:
                spelling = "--" + option.replace("_", "-")
                raise RecallError(f"{spelling} {flag!r} and the query's {value!r} disagree; give that filter once")
        return replace(self, **filters) if filters else self


LOCAL_ONLY = ("device", "weights")
_KINDS = {"limit": int, "offset": int, "min_score": float, "budget": float}
_CHOICES = {"refine": REFINE_MODES, "mode": MODES}


def _typed(name: str, value):
    kind = _KINDS.get(name, str)
    allowed = (int, float) if kind is float else kind
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise ValueError(f"option {name!r} must be {kind.__name__}, not {type(value).__name__}")
    if name in _CHOICES and value not in _CHOICES[name]:
        raise ValueError(f"option {name!r} must be one of {', '.join(_CHOICES[name])}, not {value!r}")
    return float(value) if kind is float else value


def read_queries(text: str) -> list[str]:
    """The query texts of TEXT: itself, or one per line of stdin for "-" (blank lines skipped)."""
    import sys

    if text != "-":
        if not text.strip():
            from recall_cli.errors import RecallError

            raise RecallError("empty query; say what to look for")
        return [text]
    return [line.strip() for line in sys.stdin if line.strip()]


def query_options(
    limit: int = 10,
    offset: int = 0,
    modality: str | None = None,
    within: str | None = None,
    like: str | None = None,
    since: str | None = None,
    until: str | None = None,
    min_score: float | None = None,
    budget: float | None = None,
    exact: bool = False,
    no_refine: bool = False,
    semantic: bool = False,
    keyword: bool = False,
    name: str | None = None,
    device: str | None = None,
    taken_after: str | None = None,
    taken_before: str | None = None,
    camera: str | None = None,
    near: str | None = None,
    artist: str | None = None,
) -> QueryOptions:
    """The command line's values as options, checked the same way on every path.  Paths are made
    absolute here, against the caller's working directory (a server has another one)."""
    from recall_cli.errors import RecallError

    if exact and no_refine:
        raise RecallError("choose one of --exact and --no-refine")
    if semantic and keyword:
        raise RecallError("choose one of --semantic and --keyword (neither: both, fused)")
    if within:
        within = os.path.realpath(os.path.expanduser(within))
    if like:
        like = os.path.abspath(os.path.expanduser(like))
    refine = "exact" if exact else "off" if no_refine else "auto"
    return QueryOptions(
        limit=limit,
        offset=offset,
        modality=modality,
        within=within,
        like=like,
        since=since,
        until=until,
        min_score=min_score,
        refine=refine,
        budget=budget,
        mode="semantic" if semantic else "keyword" if keyword else "hybrid",
        name=name,
        device=device,
        taken_after=taken_after,
        taken_before=taken_before,
        camera=camera,
        near=near,
        artist=artist,
    )


# --- the command line's spellings (the fast path parses argv with these; Typer declares the same) ---

FLAGS = {
    "--json": "json",
    "--jsonl": "jsonl",
    "-l": "paths",
    "--files": "paths",
    "-0": "nul",
    "--null": "nul",
    "-v": "verbose",
    "--verbose": "verbose",
    "--exact": "exact",
    "--no-refine": "no_refine",
    "--semantic": "semantic",
    "--keyword": "keyword",
    "--no-server": "no_server",
    "--no-write-back": "no_write_back",
}
VALUES = {
    "-n": "limit",
    "--limit": "limit",
    "--offset": "offset",
    "-t": "modality",
    "--type": "modality",
    "--in": "within",
    "--db": "db",
    "--like": "like",
    "--since": "since",
    "--until": "until",
    "--min-score": "min_score",
    "--budget": "budget",
    "--name": "name",
    "--taken-after": "taken_after",
    "--taken-before": "taken_before",
    "--camera": "camera",
    "--near": "near",
    "--artist": "artist",
}
# Options the fast path leaves to Typer (they need the model here, or only print): --device, --help.


def parse_query_argv(argv: list[str]) -> dict | None:
    """`recall query ...` parsed the way click would: {"text", "flags", and a value per VALUES
    name}; None for anything else or anything unusual (--help, --device, a typo...), which then
    goes through Typer as usual."""
    if not argv or argv[0] != "query":
        return None
    found: dict = {"flags": set(), "text": None}
    args, index, only_positional = argv[1:], 0, False
    while index < len(args):
        arg = args[index]
        index += 1
        if only_positional or arg == "-" or not arg.startswith("-"):
            if found["text"] is not None:
                return None
            found["text"] = arg
        elif arg == "--":
            only_positional = True
        elif arg in FLAGS:
            found["flags"].add(FLAGS[arg])
        else:
            name, eq, value = arg.partition("=")
            if not eq and name not in VALUES and name[:2] in ("-n", "-t") and len(name) > 2:
                name, value, eq = name[:2], name[2:], "="  # -n5
            if name not in VALUES:
                return None
            if not eq:
                if index >= len(args):
                    return None
                value = args[index]
                index += 1
            found[VALUES[name]] = value
    return _checked(found)


def _checked(found: dict) -> dict | None:
    """The parsed values with numbers converted, or None where Typer would refuse them (it then
    says why in its own words)."""
    if found["text"] is None and found.get("like") is None:
        return None
    if {"exact", "no_refine"} <= found["flags"] or {"semantic", "keyword"} <= found["flags"]:
        return None
    try:
        for key, kind in _KINDS.items():
            if key in found:
                found[key] = kind(found[key])
    except ValueError:
        return None
    if found.get("limit", 10) < 1 or found.get("offset", 0) < 0 or found.get("budget", 0) < 0:
        return None
    return found


def options_from_argv(parsed: dict) -> QueryOptions:
    """QueryOptions from parse_query_argv's result, through the same checks as the command line."""
    import inspect

    accepted = inspect.signature(query_options).parameters  # every option of the command line
    values = {key: value for key, value in parsed.items() if key in accepted}
    return query_options(**values, **{flag: True for flag in parsed["flags"] if flag in accepted})
