"""`recall query`: embed query texts at full depth and rank files by their best unit."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from recall_cli.errors import REBUILD_HINT, RecallError, StorageError, storage_error
from recall_cli.modalities import check_modality
from recall_cli.models import load_model
from recall_cli.query.options import QueryOptions
from recall_cli.storage.manifest import Manifest

log = logging.getLogger("recall")


def build_filter(options: QueryOptions) -> str | None:
    from recall_cli.storage.table import sql_str

    clauses = []
    if options.modality:
        clauses.append(f"modality = {sql_str(check_modality(options.modality))}")
    if options.within:
        directory = os.path.realpath(os.path.expanduser(options.within)).rstrip("/") + "/"
        clauses.append(f"starts_with(path, {sql_str(directory)})")
    if options.since or options.until:
        from recall_cli.query.language import parse_date

        if options.since:
            clauses.append(f"mtime_ns >= {parse_date(options.since)}")
        if options.until:
            clauses.append(f"mtime_ns <= {parse_date(options.until, end=True)}")
    return " AND ".join(clauses) or None


class Searcher:
    """Holds the model and the table open across queries (batch mode, and later the warm server)."""

    def __init__(self, db_dir: Path, device: str | None = None, weights: str | None = None):
        manifest = Manifest(db_dir, create=False)
        try:
            self.model_name = manifest.get_meta("model")
            model_version = manifest.get_meta("model_version")
            manifest.check_vectors_present()
        finally:
            manifest.close()
        if self.model_name is None or model_version is None:
            raise RecallError(f"the index at {db_dir} is empty; run `recall index PATH` first")
        from recall_cli.storage.table import Store

        self.store = Store(db_dir)
        if self.store.table is None:
            raise RecallError(f"the index at {db_dir} has no embedded files yet; run `recall index PATH`")
        self.model = load_model(self.model_name, device=device, weights=weights)
        if self.model.version != model_version:
            raise RecallError(
                f"this index was built with {model_version}, but the installed model is "
                f"{self.model.version}; {REBUILD_HINT}, or use another --db"
            )
        self.store.check(self.model.dim, self.model_name)

        self.db_dir = Path(db_dir)
        self.writes_locked = False  # True inside `recall watch`, which holds the writer lock
        self.refiner = None

    def search(self, texts: list[str], options: QueryOptions) -> list[list[dict]]:
        """One ranked result list per query text (query language: querylang.py).  A text of ""
        with options.like is the file alone.  Fine embeddings computed on the way wait in
        self.refiner until write_back()."""
        from recall_cli.query.language import parse_query

        if not texts:
            return []
        where = build_filter(options)
        if options.min_score is not None and not -1.0 <= options.min_score <= 1.0:
            raise RecallError("--min-score is a cosine similarity between -1 and 1")
        if options.budget is not None and options.budget < 0:
            raise RecallError("--budget is a number of seconds, 0 or more")
        parsed = [parse_query(text) if (text or not options.like) else [] for text in texts]
        like = self._like_vector(options.like) if options.like else None
        terms = sorted({term for query in parsed for _, term in query})
        encoded = dict(zip(terms, _encode_queries(self.model, terms), strict=True)) if terms else {}
        results = []
        for text, query in zip(texts, parsed, strict=True):
            vector = sum((weight * encoded[term] for weight, term in query), np.zeros(self.model.dim, np.float32))
            if like is not None:
                vector = vector + like
            norm = float(np.linalg.norm(vector))
            if norm < 1e-6:
                raise RecallError(f"query {text!r}: the weighted terms cancel out")
            label = text or f"like:{options.like}"
            results.append(self._rank(label, (vector / norm).astype(np.float32), options, where))
        return results

    def _like_vector(self, like: str):
        """Unit-norm full-depth embedding of a file given as the query (chunks averaged)."""
        from recall_cli.index.sniff import sniff_path
        from recall_cli.models.base import DecodeError

        path = Path(os.path.expanduser(like))
        try:
            size = path.stat().st_size
        except OSError:
            raise RecallError(f"--like {like}: no such file") from None
        modality = sniff_path(path, size) if path.is_file() else None
        if modality is None or modality not in self.model.modalities:
            raise RecallError(
                f"--like {like}: not a file model {self.model_name} can embed ({', '.join(self.model.modalities)})"
            )
        try:
            units = self.model.file_units(path, modality)
        except DecodeError as error:
            raise RecallError(f"--like {like}: {error}") from None
        if not units:
            raise RecallError(f"--like {like}: nothing to embed in this file")
        vectors = self.model.encode(modality, [unit.data for unit in units]).float().cpu().numpy()
        mean = vectors.mean(axis=0)
        return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)

    def _rank(self, text: str, vector, options: QueryOptions, where: str | None) -> list[dict]:
        from recall_cli.early_exit import refine
        from recall_cli.early_exit.candidates import select_candidates

        wanted = options.offset + options.limit
        manifest = Manifest(self.db_dir, create=False)
        try:
            candidates = select_candidates(
                self.store, manifest, vector, wanted, where, options.modality, exact=options.refine == "exact"
            )
        finally:
            manifest.close()
        if options.refine != "off":
            if self.refiner is None:
                self.refiner = refine.Refiner(self.model, self.store)
            budget = (
                None
                if options.refine == "exact"
                else (refine.DEFAULT_BUDGET_S if options.budget is None else options.budget)
            )
            waiting = [row for row in candidates if not row["refined"]]
            report = self.refiner.refine(waiting, budget)
            for row in candidates:
                fine = report.fine.get(row["id"])
                if fine is not None:
                    row["vector"], row["refined"] = fine, True
                    row["score"] = float(fine @ vector)
            log.debug(
                "query %r: %d candidates, %d waiting, %d refined (%d re-encoded, %d skipped) in %.0f ms",
                text,
                len(candidates),
                len(waiting),
                report.refined,
                report.reencoded,
                report.skipped,
                report.seconds * 1000,
            )
        best = best_per_file(candidates)
        if options.min_score is not None:
            best = [row for row in best if row["score"] >= options.min_score]
        results = best[options.offset : wanted]
        return [dict(query=text, rank=options.offset + rank, **row) for rank, row in enumerate(results, 1)]

    def write_back(self) -> int:
        """Write the fine embeddings computed by the queries so far into the index (the rows
        become exact and release their cache).  Outside `recall watch` this takes the writer
        lock without waiting; when another process is writing, nothing is written (the rows are
        simply refined again next time).  Returns rows written."""
        if self.refiner is None or not self.refiner.pending():
            return 0
        if not os.access(self.db_dir, os.W_OK):  # a read-only index answers queries all the same
            log.debug("refined rows not written back: %s is read-only", self.db_dir)
            self.refiner.fine.clear()
            return 0
        from recall_cli.storage.lock import WriterLock

        try:
            manifest = Manifest(self.db_dir, create=False)
            try:
                if self.writes_locked:
                    return self.refiner.write_back(manifest)
                with WriterLock(self.db_dir, "query"):
                    return self.refiner.write_back(manifest)
            finally:
                manifest.close()
        except Exception as error:  # the results are out; the index stays as it was
            problem = error if isinstance(error, RecallError) else storage_error(error, self.db_dir)
            if problem is None:
                raise
            if isinstance(problem, StorageError) and not problem.read_only:  # disk full: say it once
                log.warning("refined embeddings not saved: %s", problem)
            else:
                log.debug("refined rows not written back: %s", problem)
            self.refiner.fine.clear()
            return 0


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
    return [
        {
            "path": row["path"],
            "score": round(float(row["score"]), 6),
            "modality": row["modality"],
            "chunk": row["chunk"],
            "snippet": row["snippet"],
            "refined": bool(row["refined"]),
            "exit_block": row["exit_block"],
        }
        for row in ordered
    ]
