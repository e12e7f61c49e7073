"""The `recall` command line: a thin Typer layer over indexer, search and stats.

Heavy modules (lancedb, torch) are imported inside the commands that need them, so `--help`,
`stats` and an unchanged `index` stay fast.  Errors the user can act on print one line and exit 2;
results go to stdout, everything else to stderr.
"""

from __future__ import annotations

import errno
import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer

from . import __version__
from .errors import RecallError, storage_error

app = typer.Typer(
    name="recall",
    help="Search your own photos, audio, video and notes with natural language.",
    add_completion=True,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

EXIT_OK, EXIT_NO_RESULTS, EXIT_ERROR, EXIT_PARTIAL = 0, 1, 2, 3

DbOption = typer.Option(None, "--db", help="Index directory (default: $RECALL_DB, else the per-user data dir).",
                        metavar="DIR")


def fail(message: str, code: int = EXIT_ERROR) -> "typer.Exit":
    typer.echo(f"recall: {message}", err=True)
    return typer.Exit(code)


def setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="recall: %(message)s", stream=sys.stderr)
    logging.getLogger("recall").setLevel(level)


def run_guarded(action, verbose: bool = False):
    """Run a command body; turn known problems into one line, unknown ones into one line too."""
    try:
        return action()
    except RecallError as error:
        raise fail(str(error), error.exit_code) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None
    except BrokenPipeError:  # `recall query ... | head`
        sys.stderr.close()
        raise typer.Exit(EXIT_OK) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as error:  # noqa: BLE001 - never a traceback for the user
        if verbose:
            raise
        storage = storage_error(error)  # disk full, read-only disk, damaged file: what to do
        if storage is not None and storage.reason not in (errno.EACCES, errno.EPERM):  # whose file?
            raise fail(str(storage), storage.exit_code) from None
        first = (str(error).splitlines() or [""])[0]
        raise fail(f"unexpected error: {type(error).__name__}: {first} (rerun with -v for details)") from None


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"recall {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True,
                                      help="Show the version and exit.")) -> None:
    """Search your own photos, audio, video and notes with natural language."""


@app.command()
def index(
    paths: List[Path] = typer.Argument(..., help="Directories to index (or update)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Embedding model for a new index: minilm, imagebind-huge."),
    db: Optional[Path] = DbOption,
    hidden: bool = typer.Option(False, "--hidden", help="Include hidden files and directories."),
    no_ignore: bool = typer.Option(False, "--no-ignore", help="Disregard .gitignore/.ignore/.recallignore and the OS-junk list."),
    exclude: List[str] = typer.Option([], "--exclude", "-x", help="Skip paths matching this gitignore-style glob (repeatable).", metavar="GLOB"),
    follow: bool = typer.Option(False, "--follow", "-L", help="Follow symlinks that lead out of the indexed directories (never by default)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Try files that failed last time again even if unchanged."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or mps."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Model weights file or folder (manual placement)."),
    full: bool = typer.Option(False, "--full", help="Full depth for this index from now on: every file runs every block (no early exit, no cache)."),
    exit_policy: Optional[str] = typer.Option(None, "--exit-policy", help="Early exit: auto (predictor once healed, else full depth), full, predictor, fixed:L, mix:L=p,...", metavar="POLICY"),
    cache_budget: Optional[str] = typer.Option(None, "--cache-budget", help="Byte budget of the INT4 activation cache, e.g. 2GiB (kept for this index).", metavar="SIZE"),
    rebuild: bool = typer.Option(False, "--rebuild", help="Build the index again from PATH... (damaged, older or another model's index); the old one is replaced only once the new one is complete."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More detail."),
) -> None:
    """Index files under PATH... or bring the index up to date (unchanged files cost a stat).

    Exit status: 0 all files indexed, 3 some files failed (the rest are indexed), 2 error."""
    setup_logging(quiet, verbose)

    def action():
        from .indexer import IndexOptions, index_roots
        from .paths import resolve_db
        from .progress import index_progress
        from .scan import ScanOptions

        options = IndexOptions(model=model, retry_failed=retry_failed, device=device,
                               weights=str(weights) if weights else None, full=full,
                               exit_policy=exit_policy, cache_budget=cache_budget,
                               scan=ScanOptions(hidden=hidden, no_ignore=no_ignore, excludes=tuple(exclude),
                                                 follow=follow))
        build = index_roots
        if rebuild:
            from .rebuild import rebuild_roots as build
        with index_progress(enabled=not quiet) as progress:
            summary = build([str(path) for path in paths], resolve_db(db), options, progress)
        report_index(summary, json_out, quiet)
        return EXIT_PARTIAL if summary.failed else EXIT_OK

    raise typer.Exit(run_guarded(action, verbose))


def report_index(summary, json_out: bool, quiet: bool) -> None:
    if json_out:
        import json

        typer.echo(json.dumps(summary.as_dict()))
        return
    changed = summary.added + summary.updated + summary.moved + summary.removed + summary.failed
    if quiet or not changed:
        return  # quiet when nothing changed (cron-friendly)
    typer.echo(f"recall: {summary.added} added, {summary.updated} updated, {summary.moved} moved, "
               f"{summary.removed} removed, {summary.failed} failed, {summary.skipped} skipped, "
               f"{summary.unchanged} unchanged ({summary.seconds:.1f} s)", err=True)


@app.command()
def query(
    text: Optional[str] = typer.Argument(None, help="What to look for: plain text, or weighted terms like '\"beach\" + 2:\"dog\" - \"people\"'; '-' reads one query per line from stdin."),
    limit: int = typer.Option(10, "--limit", "-n", min=1, help="Results per query."),
    offset: int = typer.Option(0, "--offset", min=0, help="Skip this many results first."),
    modality: Optional[str] = typer.Option(None, "--type", "-t", help="Only image, video, audio or text."),
    within: Optional[Path] = typer.Option(None, "--in", help="Only files under this directory.", metavar="DIR"),
    like: Optional[Path] = typer.Option(None, "--like", help="Use this file (photo, sound, text...) as the query, added to TEXT if given.", metavar="FILE"),
    since: Optional[str] = typer.Option(None, "--since", help="Only files modified on or after DATE (YYYY-MM-DD or ISO datetime).", metavar="DATE"),
    until: Optional[str] = typer.Option(None, "--until", help="Only files modified on or before DATE (YYYY-MM-DD: that whole day).", metavar="DATE"),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Drop results scoring below this cosine similarity.", metavar="SCORE"),
    budget: Optional[float] = typer.Option(None, "--budget", min=0.0, help="Seconds to spend refining coarse candidates (default 0.5).", metavar="SECONDS"),
    exact: bool = typer.Option(False, "--exact", help="Refine every candidate the ranking could depend on (no time budget)."),
    no_refine: bool = typer.Option(False, "--no-refine", help="Rank by stored embeddings only; refine nothing."),
    json_out: bool = typer.Option(False, "--json", help="One JSON array of results."),
    jsonl: bool = typer.Option(False, "--jsonl", help="One JSON object per result line."),
    paths_only: bool = typer.Option(False, "-l", "--files", help="Paths only, one per line."),
    nul: bool = typer.Option(False, "-0", "--null", help="Paths only, NUL-separated (for xargs -0)."),
    db: Optional[Path] = DbOption,
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or mps."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More detail."),
) -> None:
    """Search the index.  Exit status: 0 results found, 1 none, 2 error."""
    setup_logging(False, verbose)

    def action():
        from .output import resolve_format, write_results
        from .paths import resolve_db
        from .server import warm_query

        fmt = resolve_format(json_out, jsonl, paths_only, nul, sys.stdout)
        if exact and no_refine:
            raise RecallError("choose one of --exact and --no-refine")
        if text is None and like is None:
            raise RecallError("say what to look for: a TEXT query, '-' for stdin, or --like FILE")
        texts = read_queries(text) if text is not None else [""]
        db_dir = resolve_db(db)
        extra = {"like": str(like) if like else None, "since": since, "until": until, "min_score": min_score,
                 "refine": "exact" if exact else "off" if no_refine else "auto", "budget": budget}
        # a running `recall watch` answers with its model already loaded (no torch/lancedb here)
        per_query = None if device else warm_query(db_dir, texts, limit, offset, modality,
                                                   str(within) if within else None, **extra)
        searcher = None
        if per_query is None:
            from .search import QueryOptions, Searcher

            options = QueryOptions(limit=limit, offset=offset, modality=modality,
                                   within=str(within) if within else None, **extra)
            searcher = Searcher(db_dir, device=device)
            per_query = searcher.search(texts, options)
        write_results(per_query, fmt)
        if searcher is not None:  # results first, then make the index more exact
            searcher.write_back()
        return EXIT_OK if any(per_query) else EXIT_NO_RESULTS

    raise typer.Exit(run_guarded(action, verbose))


def read_queries(text: str) -> list[str]:
    if text != "-":
        if not text.strip():
            raise RecallError("empty query; say what to look for")
        return [text]
    return [line.strip() for line in sys.stdin if line.strip()]


@app.command()
def stats(db: Optional[Path] = DbOption,
          json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """What is indexed, and how."""

    def action():
        from .paths import resolve_db
        from .stats import collect_stats, format_stats

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
    paths: List[Path] = typer.Argument(..., help="Directories to watch (caught up first with an index pass)."),
    db: Optional[Path] = DbOption,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Embedding model for a new index: minilm, imagebind-huge."),
    delay: float = typer.Option(3.0, "--delay", min=0.0, help="Seconds a file must be quiet (and its size steady) before it is indexed.", metavar="SECONDS"),
    delay_pattern: List[str] = typer.Option([], "--delay-pattern", help="Wait longer for paths matching GLOB, e.g. '*.log=60' (repeatable).", metavar="GLOB=SECONDS"),
    reconcile: float = typer.Option(900.0, "--reconcile", min=0.0, help="Seconds between full reconciliation passes (0: never).", metavar="SECONDS"),
    poll: bool = typer.Option(False, "--poll", help="Poll for changes instead of using inotify (network drives)."),
    no_serve: bool = typer.Option(False, "--no-serve", help="Do not answer `recall query` over the index's socket."),
    hidden: bool = typer.Option(False, "--hidden", help="Include hidden files and directories."),
    no_ignore: bool = typer.Option(False, "--no-ignore", help="Disregard .gitignore/.ignore/.recallignore and the OS-junk list."),
    exclude: List[str] = typer.Option([], "--exclude", "-x", help="Skip paths matching this gitignore-style glob (repeatable).", metavar="GLOB"),
    follow: bool = typer.Option(False, "--follow", "-L", help="Follow symlinks that lead out of the indexed directories (never by default)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or mps."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Model weights file or folder (manual placement)."),
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
        from .indexer import IndexOptions
        from .paths import resolve_db
        from .scan import ScanOptions
        from .watch import WatchOptions, parse_delay_patterns, watch_roots

        options = WatchOptions(
            index=IndexOptions(model=model, device=device, weights=str(weights) if weights else None,
                               scan=ScanOptions(hidden=hidden, no_ignore=no_ignore, excludes=tuple(exclude),
                                                 follow=follow)),
            delay=delay, delay_patterns=parse_delay_patterns(delay_pattern), reconcile=reconcile, poll=poll,
            serve=not no_serve, json_log=json_log, quiet=quiet, verbose=verbose)
        return watch_roots([str(path) for path in paths], resolve_db(db), options)

    raise typer.Exit(run_guarded(action, verbose))


@app.command()
def heal(
    db: Optional[Path] = DbOption,
    budget: float = typer.Option(10.0, "--budget", min=0.2, help="Minutes to spend (training, predictor).", metavar="MINUTES"),
    exits: Optional[str] = typer.Option(None, "--exits", help="Exit blocks to heal, e.g. 2,3,4 (default: the model's exit points).", metavar="LIST"),
    mode: str = typer.Option("lora", "--mode", help="lora: LoRA in the blocks + exit heads; heads: exit heads only."),
    target_compute: float = typer.Option(0.6, "--target-compute", min=0.05, max=1.0, help="Predictor labels keep mean blocks per file at or below this fraction of full depth."),
    refresh_only: bool = typer.Option(False, "--refresh-only", help="Only bring stale coarse embeddings up to date."),
    json_out: bool = typer.Option(False, "--json", help="Print the heal report as JSON on stdout."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More detail."),
) -> None:
    """Train the early-exit adapters and the exit predictor on the indexed collection, then bring
    stored coarse embeddings up to date."""
    setup_logging(False, verbose)

    def action():
        import json

        from .heal import HealOptions
        from .heal_run import refresh_stale, run_heal
        from .paths import resolve_db
        from .progress import heal_progress

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
                options = HealOptions(budget_minutes=budget, mode=mode, exits=exit_list,
                                      target_compute=target_compute)
                report = run_heal(db_dir, options, on_step, on_refresh)
        if json_out:
            typer.echo(json.dumps(report, indent=2, default=str))
        else:
            typer.echo(format_heal(report), err=True)
        return EXIT_OK

    raise typer.Exit(run_guarded(action, verbose))


def format_heal(report: dict) -> str:
    lines = []
    if "version" in report:
        lines.append(f"recall: healed adapters v{report['version']} ({report['adapter_bytes'] / 1024:.0f} KiB)")
    for modality, info in report.get("modalities", {}).items():
        cos = ", ".join(f"{e}: {c.get('heldout_mean', c['train_mean']):.3f}" for e, c in info["cosine"].items())
        accuracy = info["predictor"].get("heldout_accuracy")
        lines.append(f"  {modality}: exits {info['exits']}, cosine to full depth (held-out files) {cos}; "
                     f"predictor held-out accuracy {accuracy if accuracy is None else round(accuracy, 3)}, "
                     f"mean blocks {info['label_mean_blocks']:.2f} of {info['depth']}")
    refresh = report.get("refresh", {})
    lines.append(f"  refreshed {refresh.get('refreshed', 0)} stale coarse embeddings"
                 + (f" ({refresh['failed']} could not be re-read)" if refresh.get("failed") else ""))
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    app()
