"""SQL literals for LanceDB filters (no lancedb import, so light modules can build filters too)."""

from __future__ import annotations

from collections.abc import Iterable

from recall_cli.paths import stored_path


def sql_str(value: str) -> str:
    """A quoted string literal; file names are written in their stored form (see paths.py),
    which leaves every other string unchanged."""
    return "'" + stored_path(value).replace("'", "''") + "'"


def sql_in(column: str, values: Iterable[str]) -> str:
    return f"{column} IN ({', '.join(sql_str(value) for value in values)})"
