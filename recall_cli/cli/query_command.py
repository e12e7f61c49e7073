"""`recall query`: its options, and the one path from them to printed results (a running query
server answers when there is one; else a Searcher here, which leaves a server behind)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from recall_cli.cli import params
from recall_cli.cli.guard import EXIT_NO_RESULTS, EXIT_OK, run_guarded, setup_logging
from recall_cli.cli.params import DbOption, DeviceOption
from recall_cli.errors import RecallError


def query(
    text: Optional[str] = typer.Argument(
        None,
        help='What to look for: plain text, or weighted terms like \'"beach" + 2:"dog" - "people"\'; '
        "'-' reads one query per line from stdin.",
    ),
    limit: int = typer.Option(10, "--limit", "-n", min=1, help="Results per query."),
    offset: int = typer.Option(0, "--offset", min=0, help="Skip this many results first."),
    modality: Optional[str] = typer.Option(None, "--type", "-t", help="Only image, video, audio or text."),
    within: Optional[Path] = typer.Option(None, "--in", help="Only files under this directory.", metavar="DIR"),
    like: Optional[Path] = typer.Option(
        None,
        "--like",
        help="Use this file (photo, sound, text...) as the query, added to TEXT if given.",
        metavar="FILE",
    ),
    since: Optional[str] = typer.Option(
        None, "--since", help="Only files modified on or after DATE (YYYY-MM-DD or ISO datetime).", metavar="DATE"
    ),
    until: Optional[str] = typer.Option(
        None, "--until", help="Only files modified on or before DATE (YYYY-MM-DD: that whole day).", metavar="DATE"
    ),
    min_score: Optional[float] = typer.Option(
        None, "--min-score", help="Drop results scoring below this cosine similarity.", metavar="SCORE"
    ),
    budget: Optional[float] = typer.Option(
        None, "--budget", min=0.0, help="Seconds to spend refining coarse candidates (default 0.5).", metavar="SECONDS"
    ),
    exact: bool = typer.Option(
        False, "--exact", help="Refine every candidate the ranking could depend on (no time budget)."
    ),
    no_refine: bool = typer.Option(False, "--no-refine", help="Rank by stored embeddings only; refine nothing."),
    semantic: bool = typer.Option(False, "--semantic", help="Rank by meaning only (embeddings), no keyword search."),
    keyword: bool = typer.Option(
        False, "--keyword", help="Rank by words only (full-text search over text, file and folder names)."
    ),
    name: Optional[str] = typer.Option(
        None, "--name", help="Only files whose name matches GLOB (any case), e.g. '*kayak*.jpg'.", metavar="GLOB"
    ),
    taken_after: Optional[str] = params.TakenAfterOption,
    taken_before: Optional[str] = params.TakenBeforeOption,
    camera: Optional[str] = params.CameraOption,
    near: Optional[str] = params.NearOption,
    artist: Optional[str] = params.ArtistOption,
    json_out: bool = typer.Option(False, "--json", help="One JSON array of results."),
    jsonl: bool = typer.Option(False, "--jsonl", help="One JSON object per result line."),
    paths_only: bool = typer.Option(False, "-l", "--files", help="Paths only, one per line."),
    nul: bool = typer.Option(False, "-0", "--null", help="Paths only, NUL-separated (for xargs -0)."),
    db: Optional[Path] = DbOption,
    device: Optional[str] = DeviceOption,
    no_server: bool = typer.Option(
        False, "--no-server", help="Answer in this process: neither ask a query server nor leave one running."
    ),
    no_write_back: bool = typer.Option(
        False,
        "--no-write-back",
        help="Write nothing into the index; each query refines as if it were the first (answered in this process).",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More detail."),
) -> None:
    """Search the index by meaning and by words at once (both rankings fused; --semantic or
    --keyword for one).  "quoted phrase" must appear as written; name:WORD must be in the file
    name; taken:2019-07 (or A..B), near:PLACE, camera:TEXT and artist:TEXT filter like their
    flags.  Exit status: 0 results found, 1 none, 2 error."""
    setup_logging(False, verbose)

    def action():
        from recall_cli.cli.output import resolve_format, write_results
        from recall_cli.query.options import query_options, read_queries
        from recall_cli.query.server import warm_query
        from recall_cli.storage.layout import resolve_db

        fmt = resolve_format(json_out, jsonl, paths_only, nul, sys.stdout)
        options = query_options(
            limit=limit,
            offset=offset,
            modality=modality,
            within=within and str(within),
            like=like and str(like),
            since=since,
            until=until,
            min_score=min_score,
            budget=budget,
            exact=exact,
            no_refine=no_refine,
            semantic=semantic,
            keyword=keyword,
            name=name,
            device=device,
            taken_after=taken_after,
            taken_before=taken_before,
            camera=camera,
            near=near,
            artist=artist,
        )
        if text is None and like is None:
            raise RecallError("say what to look for: a TEXT query, '-' for stdin, or --like FILE")
        texts = read_queries(text) if text is not None else [""]
        db_dir = resolve_db(db)
        # a running server answers with its model already loaded (no torch/lancedb here); a query
        # that names a device wants the model here, and so does --no-write-back (a server writes
        # its refined rows back and shares them between queries)
        local = bool(device) or no_server or no_write_back
        per_query = None if local else warm_query(db_dir, texts, options)
        searcher = None
        if per_query is None:
            from recall_cli.query.search import Searcher

            searcher = Searcher(db_dir, device=device, leave_index=no_write_back)
            per_query = searcher.search(texts, options)
        write_results(per_query, fmt)
        if searcher is not None and not local:
            # a server for the next query, started once this one is answered: loading beside it
            # would take the CPU the answer needs
            from recall_cli.query.ondemand import start_in_background

            start_in_background(db_dir)
        if searcher is not None:  # results first, then make the index more exact
            searcher.write_back()
        return EXIT_OK if any(per_query) else EXIT_NO_RESULTS

    raise typer.Exit(run_guarded(action, verbose))
