"""`recall query`: embed query texts at full depth and rank files by their best unit."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import RecallError
from .manifest import Manifest
from .models import MODALITIES_ALL, load_model


@dataclass(frozen=True)
class QueryOptions:
    limit: int = 10
    offset: int = 0
    modality: str | None = None  # only this modality
    within: str | None = None  # only files under this directory
    device: str | None = None
    weights: str | None = None


def build_filter(options: QueryOptions) -> str | None:
    from .store import sql_str

    clauses = []
    if options.modality:
        if options.modality not in MODALITIES_ALL:
            raise RecallError(f"unknown --type {options.modality!r}; use one of {', '.join(MODALITIES_ALL)}")
        clauses.append(f"modality = {sql_str(options.modality)}")
    if options.within:
        directory = os.path.realpath(os.path.expanduser(options.within)).rstrip("/") + "/"
        clauses.append(f"starts_with(path, {sql_str(directory)})")
    return " AND ".join(clauses) or None


class Searcher:
    """Holds the model and the table open across queries (batch mode, and later the warm server)."""

    def __init__(self, db_dir: Path, device: str | None = None, weights: str | None = None):
        manifest = Manifest(db_dir, create=False)
        try:
            self.model_name = manifest.get_meta("model")
            model_version = manifest.get_meta("model_version")
        finally:
            manifest.close()
        if self.model_name is None or model_version is None:
            raise RecallError(f"the index at {db_dir} is empty; run `recall index PATH` first")
        from .store import Store

        self.store = Store(db_dir)
        if self.store.table is None:
            raise RecallError(f"the index at {db_dir} has no embedded files yet; run `recall index PATH`")
        self.model = load_model(self.model_name, device=device, weights=weights)
        if self.model.version != model_version:
            raise RecallError(f"this index was built with {model_version}, but the installed model is "
                              f"{self.model.version}; rebuild it into a new --db")

    def search(self, texts: list[str], options: QueryOptions) -> list[list[dict]]:
        if not texts:
            return []
        vectors = _encode_queries(self.model, texts)
        where = build_filter(options)
        return [self._rank(text, vector, options, where) for text, vector in zip(texts, vectors)]

    def _rank(self, text: str, vector, options: QueryOptions, where: str | None) -> list[dict]:
        wanted = options.offset + options.limit
        total = self.store.count()
        fetch = max(wanted * 4, 32)
        while True:
            best = best_per_file(self.store.search(vector, fetch, where))
            if len(best) >= wanted or fetch >= total:
                break
            fetch *= 4  # many chunks of few files: look deeper
        results = best[options.offset:wanted]
        return [dict(query=text, rank=options.offset + rank, **row) for rank, row in enumerate(results, 1)]


def _encode_queries(model, texts: list[str]):
    """A few query texts are encoded on one CPU thread: as fast as two for a short input, never
    stalled by a busy second core, and the same numbers warm (watch server) and cold."""
    import torch

    if len(texts) > 8:
        return model.encode_texts(texts).cpu().numpy()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # per calling thread (OpenMP); restored below
    try:
        return model.encode_texts(texts).cpu().numpy()
    finally:
        torch.set_num_threads(previous)


def best_per_file(rows: list[dict]) -> list[dict]:
    """One result per file: its best-scoring unit, files ordered by that score."""
    best: dict[str, dict] = {}
    for row in rows:
        if row["path"] not in best or row["score"] > best[row["path"]]["score"]:
            best[row["path"]] = row
    ordered = sorted(best.values(), key=lambda row: -row["score"])
    return [{"path": row["path"], "score": round(float(row["score"]), 6), "modality": row["modality"],
             "chunk": row["chunk"], "snippet": row["snippet"], "refined": bool(row["refined"]),
             "exit_block": row["exit_block"]} for row in ordered]
