"""The `recall` command line: a thin Typer layer over indexer, search and stats.

Heavy modules (lancedb, torch) are imported inside the commands that need them, so `--help`,
`stats` and an unchanged `index` stay fast.  Errors the user can act on print one line and exit 2;
results go to stdout, everything else to stderr.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from recall_cli import __version__
from recall_cli.cli import params
from recall_cli.cli.guard import EXIT_OK, EXIT_PARTIAL, run_guarded, setup_logging
from recall_cli.cli.params import (
    DbOption,
    DeviceOption,
    DtypeOption,
    ExcludeOption,
    FollowOption,
    HiddenOption,
    ModelOption,
    NoIgnoreOption,
    WeightsOption,
)
from recall_cli.cli.query_command import query
from recall_cli.cli.reports import format_heal, profiled, report_index
from recall_cli.cli.server_commands import server_app
from recall_cli.errors import RecallError

app = typer.Typer(
    name="recall",
    help="Search your own photos, audio, video and notes with natural language.",
    add_completion=True,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
app.add_typer(server_app, name="server")


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"recall {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=version_callback, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Search your own photos, audio, video and notes with natural language."""


@app.command()
def index(
    paths: list[Path] = typer.Argument(..., help="Directories to index (or update)."),
    model: Optional[str] = ModelOption,
    db: Optional[Path] = DbOption,
    hidden: bool = HiddenOption,
    no_ignore: bool = NoIgnoreOption,
    exclude: list[str] = ExcludeOption,
    follow: bool = FollowOption,
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="Try files that failed last time again even if unchanged."
    ),
    no_ocr: bool = params.NoOcrOption,
    device: Optional[str] = DeviceOption,
    dtype: Optional[str] = DtypeOption,
    weights: Optional[Path] = WeightsOption,
    full: bool = typer.Option(
        False,
        "--full",
        help="Full depth for this index from now on: every file runs every block (no early exit, no cache).",
    ),
    exit_policy: Optional[str] = typer.Option(
        None,
        "--exit-policy",
        help="Early exit: auto (predictor once healed, else full depth), full, predictor, fixed:L, mix:L=p,...",
        metavar="POLICY",
    ),
    cache_budget: Optional[str] = typer.Option(
        None,
        "--cache-budget",
        help="Byte budget of the INT4 activation cache, e.g. 2GiB (kept for this index).",
        metavar="SIZE",
    ),
    rebuild: bool = typer.Option(
        False,
        "--rebuild",
        help="Build the index again from PATH... (damaged, older or another model's index); "
        "the old one is replaced only once the new one is complete.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    profile: bool = typer.Option(
        False, "--profile", help="Print where the time went (seconds per stage) to stderr at the end."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More detail."),
) -> None:
    """Index files under PATH... or bring the index up to date (unchanged files cost a stat).

    Exit status: 0 all files indexed, 3 some files failed (the rest are indexed), 2 error."""
    setup_logging(quiet, verbose)

    def action():
        from recall_cli.cli.progress import index_progress
        from recall_cli.index.indexer import index_roots
        from recall_cli.index.options import IndexOptions
        from recall_cli.index.scan import ScanOptions
        from recall_cli.storage.layout import resolve_db

        options = IndexOptions(
            model=model,
            retry_failed=retry_failed,
            device=device,
            dtype=dtype,
            weights=str(weights) if weights else None,
            full=full,
            exit_policy=exit_policy,
            cache_budget=cache_budget,
            ocr=not no_ocr,
            scan=ScanOptions(hidden=hidden, no_ignore=no_ignore, excludes=tuple(exclude), follow=follow),
        )
        build = index_roots
        if rebuild:
            from recall_cli.index.rebuild import rebuild_roots as build
        with index_progress(enabled=not quiet) as progress, profiled(profile):
            summary = build([str(path) for path in paths], resolve_db(db), options, progress)
        report_index(summary, json_out, quiet)
        return EXIT_PARTIAL if summary.failed else EXIT_OK

    raise typer.Exit(run_guarded(action, verbose))


app.command()(query)


@app.command()
def stats(
    db: Optional[Path] = DbOption, json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")
) -> None:
    """What is indexed, and how."""

    def action():
        from recall_cli.cli.reports import format_stats
        from recall_cli.index.stats import collect_stats
        from recall_cli.storage.layout import resolve_db

        collected = collect_stats(resolve_db(db))
        if json_out:
            import json

            typer.echo(json.dumps(collected, indent=2))
        else:
            typer.echo(format_stats(collected))
        return EXIT_OK

    raise typer.Exit(run_guarded(action))


@app.command()
def watch(
    paths: list[Path] = typer.Argument(..., help="Directories to watch (caught up first with an index pass)."),
    db: Optional[Path] = DbOption,
    model: Optional[str] = ModelOption,
    delay: float = typer.Option(
        3.0,
        "--delay",
        min=0.0,
        help="Seconds a file must be quiet (and its size steady) before it is indexed.",
        metavar="SECONDS",
    ),
    delay_pattern: list[str] = typer.Option(
        [],
        "--delay-pattern",
        help="Wait longer for paths matching GLOB, e.g. '*.log=60' (repeatable).",
        metavar="GLOB=SECONDS",
    ),
    reconcile: float = typer.Option(
        900.0, "--reconcile", min=0.0, help="Seconds between full reconciliation passes (0: never).", metavar="SECONDS"
    ),
    poll: bool = typer.Option(False, "--poll", help="Poll for changes instead of using inotify (network drives)."),
    no_serve: bool = typer.Option(False, "--no-serve", help="Do not answer `recall query` over the index's socket."),
    hidden: bool = HiddenOption,
    no_ignore: bool = NoIgnoreOption,
    exclude: list[str] = ExcludeOption,
    follow: bool = FollowOption,
    device: Optional[str] = DeviceOption,
    weights: Optional[Path] = WeightsOption,
    no_ocr: bool = params.NoOcrOption,
    json_log: bool = typer.Option(False, "--json-log", help="Log one JSON object per line on stderr."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More detail."),
) -> None:
    """Keep the index live while files change, and answer queries warm.

    Catches up with an index pass, then follows file events: each file is indexed once it has been
    quiet for --delay seconds; moves keep their embeddings; a full pass every --reconcile seconds
    catches anything missed.  Ctrl-C / SIGTERM finish the current batch and exit 0."""
    setup_logging(quiet, verbose)

    def action():
        from recall_cli.index.options import IndexOptions
        from recall_cli.index.scan import ScanOptions
        from recall_cli.storage.layout import resolve_db
        from recall_cli.watch.debounce import parse_delay_patterns
        from recall_cli.watch.watcher import WatchOptions, watch_roots

        options = WatchOptions(
            index=IndexOptions(
                model=model,
                device=device,
                weights=str(weights) if weights else None,
                ocr=not no_ocr,
                scan=ScanOptions(hidden=hidden, no_ignore=no_ignore, excludes=tuple(exclude), follow=follow),
            ),
            delay=delay,
            delay_patterns=parse_delay_patterns(delay_pattern),
            reconcile=reconcile,
            poll=poll,
            serve=not no_serve,
            json_log=json_log,
            quiet=quiet,
            verbose=verbose,
        )
        return watch_roots([str(path) for path in paths], resolve_db(db), options)

    raise typer.Exit(run_guarded(action, verbose))


@app.command()
def heal(
    db: Optional[Path] = DbOption,
    budget: float = typer.Option(
        10.0, "--budget", min=0.2, help="Minutes to spend (training, predictor).", metavar="MINUTES"
    ),
    exits: Optional[str] = typer.Option(
        None, "--exits", help="Exit blocks to heal, e.g. 2,3,4 (default: the model's exit points).", metavar="LIST"
    ),
    mode: str = typer.Option("lora", "--mode", help="lora: LoRA in the blocks + exit heads; heads: exit heads only."),
    target_compute: float = typer.Option(
        0.6,
        "--target-compute",
        min=0.05,
        max=1.0,
        help="Predictor labels keep mean blocks per file at or below this fraction of full depth.",
    ),
    refresh_only: bool = typer.Option(False, "--refresh-only", help="Only bring stale coarse embeddings up to date."),
    json_out: bool = typer.Option(False, "--json", help="Print the heal report as JSON on stdout."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More detail."),
) -> None:
    """Train the early-exit adapters and the exit predictor on the indexed collection, then bring
    stored coarse embeddings up to date."""
    setup_logging(False, verbose)

    def action():

        from recall_cli.cli.progress import heal_progress
        from recall_cli.early_exit.heal import HealOptions
        from recall_cli.early_exit.heal_run import refresh_stale, run_heal
        from recall_cli.storage.layout import resolve_db

        if mode not in ("lora", "heads"):
            raise RecallError(f"unknown --mode {mode!r}; use lora or heads")
        try:
            exit_list = tuple(int(part) for part in exits.split(",")) if exits else None
        except ValueError:
            raise RecallError(f"--exits takes block numbers like 2,3,4, not {exits!r}") from None
        db_dir = resolve_db(db)
        with heal_progress() as (on_step, on_refresh):
            if refresh_only:
                report = {"refresh": refresh_stale(db_dir, on_refresh)}
            else:
                options = HealOptions(budget_minutes=budget, mode=mode, exits=exit_list, target_compute=target_compute)
                report = run_heal(db_dir, options, on_step, on_refresh)
        if json_out:
            typer.echo(json.dumps(report, indent=2, default=str))
        else:
            typer.echo(format_heal(report), err=True)
        return EXIT_OK

    raise typer.Exit(run_guarded(action, verbose))


if __name__ == "__main__":  # pragma: no cover
    app()
