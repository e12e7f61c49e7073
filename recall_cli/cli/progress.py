"""Progress on stderr: a rich bar (files/s, ETA) only when stderr is a terminal."""

from __future__ import annotations

import sys
from contextlib import contextmanager


@contextmanager
def index_progress(enabled: bool = True):
    """Yields a callback(done, total) for the indexer; a no-op off a terminal."""
    if not (enabled and sys.stderr.isatty()):
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("indexing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("index", total=None, rate="")

        def update(done: int, total: int) -> None:
            elapsed = progress.tasks[0].elapsed or 0
            rate = f"{done / elapsed:.1f} files/s" if elapsed > 0 else ""
            progress.update(task, completed=done, total=total, rate=rate)

        yield update


@contextmanager
def heal_progress():
    """Yields (on_step(stage, step, loss), on_refresh(done, total)); rich display on a terminal,
    else one log line per stage."""
    import logging

    log = logging.getLogger("recall")
    if not sys.stderr.isatty():
        seen = set()

        def on_step(stage, step, loss):
            if stage not in seen:
                seen.add(stage)
                log.info("healing %s", stage)

        yield on_step, None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn("{task.description}"),
        TextColumn("{task.fields[detail]}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task("healing", total=None, detail="")

        def on_step(stage, step, loss):
            progress.update(task, description=f"healing {stage}", detail=f"step {step} loss {loss:.4f}")

        def on_refresh(done, total):
            progress.update(task, description="refreshing coarse embeddings", detail="", completed=done, total=total)

        yield on_step, on_refresh
