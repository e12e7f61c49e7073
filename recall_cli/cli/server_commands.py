"""`recall server status|stop|run`: the on-demand query server of an index (query/ondemand.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from recall_cli.cli.guard import EXIT_NO_RESULTS, EXIT_OK, run_guarded
from recall_cli.cli.params import DbOption
from recall_cli.errors import RecallError

server_app = typer.Typer(
    help="The query server of an index: started by `recall query`, gone when idle.", no_args_is_help=True
)


@server_app.command("status")
def server_status(
    db: Optional[Path] = DbOption,
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show the running query server (pid, index, uptime, queries served, memory).  Exit 1: none."""

    def action():
        from recall_cli.cli.reports import format_server_status
        from recall_cli.query.server import request
        from recall_cli.storage.layout import resolve_db

        reply = request(resolve_db(db), {"op": "status"}, timeout=10)
        if not reply or not reply.get("ok"):
            typer.echo("recall: no query server is running for this index", err=True)
            return EXIT_NO_RESULTS
        status = reply["status"]["server"]
        typer.echo(json.dumps(status, indent=2) if json_out else format_server_status(status))
        return EXIT_OK

    raise typer.Exit(run_guarded(action))


@server_app.command("stop")
def server_stop(db: Optional[Path] = DbOption) -> None:
    """Stop the on-demand query server of the index.  Exit 1: none was running."""

    def action():
        from recall_cli.query.server import request
        from recall_cli.storage.layout import resolve_db

        reply = request(resolve_db(db), {"op": "stop"}, timeout=10)
        if reply is None:
            typer.echo("recall: no query server is running for this index", err=True)
            return EXIT_NO_RESULTS
        if not reply.get("ok"):
            raise RecallError(reply.get("error") or "the query server did not stop")
        return EXIT_OK

    raise typer.Exit(run_guarded(action))


@server_app.command("run")
def server_run(
    db: Optional[Path] = DbOption,
    idle: Optional[float] = typer.Option(
        None, "--idle", min=0.0, help="Exit after this many seconds without a query (default 300).", metavar="SECONDS"
    ),
) -> None:
    """Serve queries for the index in this process (what `recall query` starts in the background)."""

    def action():
        from recall_cli.query.ondemand import run_server
        from recall_cli.storage.layout import resolve_db

        return run_server(resolve_db(db), idle)

    raise typer.Exit(run_guarded(action))
