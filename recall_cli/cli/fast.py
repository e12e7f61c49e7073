"""`recall query` answered by a running query server before Typer (or anything heavy) is imported:
a warm query is then one socket round trip.  Anything this path cannot handle (no server, --help,
an option it does not know) returns None and goes through the full command line instead, with
identical results."""

from __future__ import annotations

import os

from recall_cli.query.options import options_from_argv, parse_query_argv, read_queries
from recall_cli.query.server import servers_off, socket_path, warm_query


def fast_query(argv: list[str]) -> int | None:
    """Run `recall query ...` against a running server; None: not possible, use the full CLI."""
    import sys

    parsed = parse_query_argv(argv)
    if parsed is None or {"no_server", "no_write_back"} & set(parsed["flags"]) or servers_off():
        return None
    from recall_cli.storage.layout import resolve_db

    db_dir = resolve_db(parsed.get("db"))
    if not os.path.exists(socket_path(db_dir)):
        return None
    from recall_cli.cli.output import resolve_format, write_results
    from recall_cli.errors import RecallError

    flags = parsed["flags"]
    try:
        fmt = resolve_format("json" in flags, "jsonl" in flags, "paths" in flags, "nul" in flags, sys.stdout)
        text = parsed["text"]
        texts = read_queries(text) if text is not None else [""]  # "": --like alone
        per_query = warm_query(db_dir, texts, options_from_argv(parsed))
        if per_query is None:
            if text == "-":  # stdin is spent: hand the texts to the full CLI
                sys.stdin = __import__("io").StringIO("\n".join(texts) + "\n")
            return None
        write_results(per_query, fmt)
    except RecallError as error:
        sys.stderr.write(f"recall: {error}\n")
        return error.exit_code
    except BrokenPipeError:  # `recall query ... | head`
        sys.stderr.close()
        return 0
    return 0 if any(per_query) else 1
