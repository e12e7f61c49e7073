"""Print query results: a table for people, JSON / JSON lines / paths for pipelines."""

from __future__ import annotations

import json
import os
import sys
from typing import TextIO

from recall_cli.paths import display_path, json_safe, printable

FORMATS = ("auto", "table", "tsv", "json", "jsonl", "paths", "nul")


def resolve_format(json_out: bool, jsonl: bool, paths: bool, nul: bool, stream: TextIO) -> str:
    chosen = [name for name, flag in (("json", json_out), ("jsonl", jsonl), ("paths", paths), ("nul", nul)) if flag]
    if len(chosen) > 1:
        from recall_cli.errors import RecallError

        raise RecallError(f"choose one output mode, not {' and '.join('--' + c for c in chosen)}")
    if chosen:
        return chosen[0]
    return "table" if stream.isatty() else "tsv"


def write_results(per_query: list[list[dict]], fmt: str, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    flat = [result for results in per_query for result in results]
    if fmt == "json":
        json.dump([json_safe(result) for result in flat], stream, ensure_ascii=False, indent=2)
        stream.write("\n")
    elif fmt == "jsonl":
        for result in flat:
            stream.write(json.dumps(json_safe(result), ensure_ascii=False) + "\n")
    elif fmt in ("paths", "nul"):
        _write_paths(flat, b"\n" if fmt == "paths" else b"\0", stream)
    elif fmt == "tsv":
        many = len(per_query) > 1
        for result in flat:
            fields = [printable(result["query"])] if many else []
            fields += [str(result["rank"]), f"{result['score']:.4f}", result["modality"], display_path(result["path"])]
            stream.write("\t".join(fields) + "\n")
    else:
        _write_tables(per_query, stream)
    stream.flush()


def _write_paths(results: list[dict], end: bytes, stream: TextIO) -> None:
    """The exact bytes of each file name (for xargs and friends), each file once."""
    binary = getattr(stream, "buffer", None)
    if binary is not None:
        stream.flush()  # whatever the text layer holds goes first
    seen = set()
    for result in results:
        if result["path"] in seen:
            continue
        seen.add(result["path"])
        if binary is not None:
            binary.write(os.fsencode(result["path"]) + end)
        else:
            stream.write(os.fsencode(result["path"]).decode("utf-8", "replace") + end.decode())
    if binary is not None:
        binary.flush()


def _write_tables(per_query: list[list[dict]], stream: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=stream)
    for results in per_query:
        if not results:
            continue
        title = Text(printable(results[0]["query"]), style="bold") if len(per_query) > 1 else None
        table = Table(title=title, show_edge=False, pad_edge=False, expand=False)
        table.add_column("#", justify="right", style="dim")
        table.add_column("score", justify="right")
        table.add_column("type")
        table.add_column("refined", justify="center")
        table.add_column("path", style="cyan", overflow="fold")
        table.add_column("snippet", style="dim", max_width=60, overflow="ellipsis", no_wrap=True)
        for result in results:
            snippet = printable(" ".join(result.get("snippet", "").split()))
            refined = "yes" if result.get("refined") else "no" if "refined" in result else ""
            # Text(), not str: file names and contents are never read as rich markup
            table.add_row(
                str(result["rank"]),
                f"{result['score']:.3f}",
                result["modality"],
                refined,
                Text(display_path(result["path"])),
                Text(snippet),
            )
        console.print(table)
