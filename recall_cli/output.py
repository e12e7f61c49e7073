"""Print query results: a table for people, JSON / JSON lines / paths for pipelines."""

from __future__ import annotations

import json
import sys
from typing import TextIO

FORMATS = ("auto", "table", "tsv", "json", "jsonl", "paths", "nul")


def resolve_format(json_out: bool, jsonl: bool, paths: bool, nul: bool, stream: TextIO) -> str:
    chosen = [name for name, flag in (("json", json_out), ("jsonl", jsonl), ("paths", paths), ("nul", nul)) if flag]
    if len(chosen) > 1:
        from .errors import RecallError

        raise RecallError(f"choose one output mode, not {' and '.join('--' + c for c in chosen)}")
    if chosen:
        return chosen[0]
    return "table" if stream.isatty() else "tsv"


def write_results(per_query: list[list[dict]], fmt: str, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    flat = [result for results in per_query for result in results]
    if fmt == "json":
        json.dump(flat, stream, ensure_ascii=False, indent=2)
        stream.write("\n")
    elif fmt == "jsonl":
        for result in flat:
            stream.write(json.dumps(result, ensure_ascii=False) + "\n")
    elif fmt in ("paths", "nul"):
        end = "\n" if fmt == "paths" else "\0"
        seen = set()
        for result in flat:
            if result["path"] not in seen:
                seen.add(result["path"])
                stream.write(result["path"] + end)
    elif fmt == "tsv":
        many = len(per_query) > 1
        for result in flat:
            fields = [result["query"]] if many else []
            fields += [str(result["rank"]), f"{result['score']:.4f}", result["modality"], result["path"]]
            stream.write("\t".join(fields) + "\n")
    else:
        _write_tables(per_query, stream)
    stream.flush()


def _write_tables(per_query: list[list[dict]], stream: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream)
    for results in per_query:
        if not results:
            continue
        table = Table(title=f"[bold]{results[0]['query']}[/]" if len(per_query) > 1 else None,
                      show_edge=False, pad_edge=False, expand=False)
        table.add_column("#", justify="right", style="dim")
        table.add_column("score", justify="right")
        table.add_column("type")
        table.add_column("refined", justify="center")
        table.add_column("path", style="cyan", overflow="fold")
        table.add_column("snippet", style="dim", max_width=60, overflow="ellipsis", no_wrap=True)
        for result in results:
            snippet = " ".join(result.get("snippet", "").split())
            refined = "yes" if result.get("refined") else "no" if "refined" in result else ""
            table.add_row(str(result["rank"]), f"{result['score']:.3f}", result["modality"], refined,
                          result["path"], snippet)
        console.print(table)
