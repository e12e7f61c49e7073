"""The command line: Typer commands, the fast path for warm queries, and what is printed (results,
reports, progress)."""
