"""`recall query`: embed query texts at full depth and rank files by their best unit."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from recall_cli.early_exit.candidates import POOL_MIN, POOL_PER_RESULT
from recall_cli.errors import REBUILD_HINT, RecallError, StorageError, error_text, storage_error
from recall_cli.modalities import check_modality
from recall_cli.models import load_model, load_query_encoder
from recall_cli.query.embed import encode_queries
from recall_cli.query.mediafilter import media_clauses, result_meta, uses_media_filters
from recall_cli.query.options import QueryOptions
from recall_cli.storage.exit_summary import ExitSummary
from recall_cli.storage.manifest import Manifest

log = logging.getLogger("recall")


def build_filter(options: QueryOptions) -> str | None:
    from recall_cli.storage.sqlfilter import sql_str

    clauses = []
    if options.modality:
        clauses.append(f"modality = {sql_str(check_modality(options.modality))}")
    if options.within:
        directory = os.path.realpath(os.path.expanduser(options.within)).rstrip("/") + "/"
        clauses.append(f"starts_with(path, {sql_str(directory)})")
    if options.name:
        clauses.append(f"regexp_like(path, {sql_str(name_pattern(options.name))})")
    if options.since or options.until:
        from recall_cli.query.language import parse_date

        if options.since:
            clauses.append(f"mtime_ns >= {parse_date(options.since)}")
        if options.until:
            clauses.append(f"mtime_ns <= {parse_date(options.until, end=True)}")
    clauses += media_clauses(options)
    return " AND ".join(clauses) or None


def name_pattern(glob: str) -> str:
    """--name GLOB as a regular expression on the whole path that matches the file name only, any
    case: `*` and `?` stay within the name, `[...]` is a class, everything else is literal."""
    import re

    out, index = [], 0
    while index < len(glob):
        char = glob[index]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and "]" in glob[index + 2 :]:
            end = glob.index("]", index + 2)
            inner = glob[index + 1 : end].replace("\\", "\\\\")
            out.append("[^" + inner[1:] + "]" if inner.startswith("!") else "[" + inner + "]")
            index = end
        else:
            out.append(re.escape(char))
        index += 1
    return "(?i)(^|/)" + "".join(out) + "$"


class Searcher:
    """Holds the model and the table open across queries (batch mode, and later the warm server)."""

    def __init__(self, db_dir: Path, device: str | None = None, weights: str | None = None, leave_index=False):
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
        self.device, self.weights = device, weights
        self._model = None  # the torch encoder, loaded when a query needs more than its embedding
        self.query_encoder = load_query_encoder(self.model_name, weights) or self.model
        if self.query_encoder.version != model_version:
            raise RecallError(
                f"this index was built with {model_version}, but the installed model is "
                f"{self.query_encoder.version}; {REBUILD_HINT}, or use another --db"
            )
        self.store.check(self.query_encoder.dim, self.model_name)

        self.db_dir = Path(db_dir)
        self.writes_locked = False  # True inside `recall watch`, which holds the writer lock
        self.compactions = 0  # by write_back, on the growth bound
        self.refiner = None
        # `recall query --no-write-back`: nothing is written into the index, and each query refines
        # as if it were the first (a later query of the batch does not reuse an earlier one's rows)
        self.leave_index = leave_index
        self._keyword_pool = None  # one background thread for the keyword side, made on first use
        self.exit_summary = ExitSummary(self.db_dir)  # read again only when the manifest changes

    @property
    def model(self):
        """The layered (torch) encoder: refinement and --like need it; a query's own embedding
        does not when the model has a light query encoder (models/minilm/light.py)."""
        if self._model is None:
            self._model = load_model(self.model_name, device=self.device, weights=self.weights)
        return self._model

    def search(self, texts: list[str], options: QueryOptions) -> list[list[dict]]:
        """One ranked result list per query text (query language: query/language.py).  A text of
        "" with options.like is the file alone.  Fine embeddings computed on the way wait in
        self.refiner until write_back()."""
        from recall_cli.query.language import Query, read_query

        if not texts:
            return []
        if options.min_score is not None and not -1.0 <= options.min_score <= 1.0:
            raise RecallError("--min-score is a cosine similarity between -1 and 1")
        if options.budget is not None and options.budget < 0:
            raise RecallError("--budget is a number of seconds, 0 or more")
        if not self.store.has_text_side and options.mode != "semantic" and not self.leave_index:
            self._add_text_side()
        queries = [read_query(text) if (text or not options.like) else Query() for text in texts]
        per_query = [options.with_filters(query.filters) for query in queries]  # taken:, near:, ... terms
        if any(uses_media_filters(each) for each in per_query) and not self.store.has_meta_side:
            raise RecallError("this index has no media metadata yet; run `recall index` on its folders once to add it")
        wheres = [build_filter(each) for each in per_query]
        # the keyword side needs no query vector: it runs on the other core while the query is embedded
        keyword_jobs = [
            self._start_keyword_search(query.keyword, each, where)
            for query, each, where in zip(queries, per_query, wheres, strict=True)
        ]
        like = self._like_vector(options.like) if options.like else None
        embed = options.mode != "keyword" or options.min_score is not None  # keyword mode needs no vector
        terms = sorted({term for query in queries for _, term in query.terms}) if embed else []
        encoded = dict(zip(terms, encode_queries(self.query_encoder, terms), strict=True)) if terms else {}
        results = []
        for text, query, job, each, where in zip(texts, queries, keyword_jobs, per_query, wheres, strict=True):
            vector = self._query_vector(text, query.terms if embed else [], encoded, like)
            label = text or f"like:{options.like}"
            by_keyword = job.result() if job is not None else None
            results.append(self._rank(label, vector, by_keyword, each, where))
        return results

    def _start_keyword_search(self, keyword, options: QueryOptions, where: str | None):
        """The keyword ranking of one query, started in the background (None: not wanted)."""
        from recall_cli.query.keyword import keyword_ranking

        if keyword.empty or options.mode == "semantic":
            return None
        if self._keyword_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._keyword_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recall-keyword")
        pool = max(POOL_PER_RESULT * (options.offset + options.limit), POOL_MIN)
        return self._keyword_pool.submit(keyword_ranking, self.store, keyword, pool, where)

    def _query_vector(self, text: str, terms: list[tuple[float, str]], encoded: dict, like):
        """sum(weight * term embedding) (+ the --like file), unit norm; None when nothing is embedded
        (a query of names alone, or keyword mode)."""
        if not terms and like is None:
            return None
        vector = sum((weight * encoded[term] for weight, term in terms), np.zeros(self.query_encoder.dim, np.float32))
        if like is not None:
            vector = vector + like
        norm = float(np.linalg.norm(vector))
        if norm < 1e-6:
            raise RecallError(f"query {text!r}: the weighted terms cancel out")
        return (vector / norm).astype(np.float32)

    def _add_text_side(self) -> None:
        """An index made before keyword search gains its text side on its first query, when it is
        writable and nobody else is writing it; until then queries are answered by vectors alone."""
        from recall_cli.storage.lock import WriterLock

        if not os.access(self.db_dir, os.W_OK):
            return
        try:
            if self.writes_locked:
                self.store.add_text_side(_upgrade_progress())
            else:
                with WriterLock(self.db_dir, "query"):
                    self.store.add_text_side(_upgrade_progress())
        except RecallError as error:  # being written: that writer upgrades it
            log.debug("keyword search not added yet: %s", error)

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

    def _rank(self, text: str, vector, by_keyword: list[dict] | None, options, where: str | None) -> list[dict]:
        """The results of one query: the vector ranking, the keyword ranking (`by_keyword`, None when
        there is none), or both fused (query/keyword.py), as options.mode and the query allow."""
        from recall_cli.query.keyword import fuse, with_similarity

        use_vector = vector is not None and options.mode != "keyword"
        if not use_vector and by_keyword is None:
            wanted = "words to embed (or --like FILE)" if options.mode == "semantic" else "words to look up"
            raise RecallError(f"query {text!r} has no {wanted} for --{options.mode}")
        by_vector = self._vector_ranking(text, vector, options, where, by_keyword or []) if use_vector else []
        by_keyword = with_similarity(by_keyword, vector) if by_keyword is not None else None
        if use_vector and by_keyword is not None:
            best = fuse([{**row, "similarity": row["score"]} for row in by_vector], by_keyword)
        elif by_keyword is not None:
            best = [{**row, "score": round(row["keyword_score"], 6)} for row in by_keyword]
        else:
            best = [{**row, "similarity": row["score"], "keyword_score": None} for row in by_vector]
        if options.min_score is not None:
            best = [row for row in best if row["similarity"] is not None and row["similarity"] >= options.min_score]
        results = [_result(row) for row in best[options.offset : options.offset + options.limit]]
        return [dict(query=text, rank=options.offset + rank, **row) for rank, row in enumerate(results, 1)]

    def _vector_ranking(self, text: str, vector, options: QueryOptions, where: str | None, by_keyword=()) -> list[dict]:
        """Files by their best unit's cosine: candidates of every exit group, the best refined
        within the budget (early_exit/candidates.py, early_exit/refine.py), the keyword side's
        first hits (`by_keyword`: its ranking, when it has one) before them."""
        from recall_cli.early_exit import refine
        from recall_cli.early_exit.candidates import refine_limit, select_candidates, to_refine

        wanted = options.offset + options.limit
        summary = self.exit_summary.get()
        exact = options.refine == "exact"
        at_most = None if exact or options.refine == "off" else refine_limit(wanted)
        candidates = select_candidates(
            self.store, summary, vector, wanted, where, options.modality, exact=exact, refine_at_most=at_most or 0
        )
        in_candidates = {row["id"]: row for row in candidates}
        hits = [in_candidates.get(row["id"], row) for row in by_keyword[:wanted]]
        if options.refine != "off" and (
            self.refiner is not None or not all(row["refined"] for row in candidates + hits)
        ):
            if self.refiner is None or self.leave_index:
                self.refiner = refine.Refiner(self.model, self.store)
            budget = None if exact else (refine.DEFAULT_BUDGET_S if options.budget is None else options.budget)
            waiting = to_refine(candidates, at_most, hits)
            report = self.refiner.refine(waiting, budget)
            for row in (*candidates, *by_keyword):  # a hit's fine vector gives its similarity (with_similarity)
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
        return best_per_file(candidates)

    def _compact_if_grown(self) -> None:
        """Compact on the growth bound (the caller holds the writer lock); a failure only costs
        the compaction: the rows are written and the next write-back tries again."""
        try:
            self.compactions += self.store.maintain_if_grown()
        except Exception as error:
            log.warning("compacting the index failed: %s: %s", type(error).__name__, error_text(error))

    def write_back(self) -> int:
        """Write the fine embeddings computed by the queries so far into the index (the rows
        become exact and release their cache).  Outside `recall watch` this takes the writer
        lock without waiting; when another process is writing, nothing is written (the rows are
        simply refined again next time).  Then compacts the table if it has grown past its bound
        (storage/growth.py).  Returns rows written."""
        if self.refiner is None or not self.refiner.pending() or self.leave_index:
            return 0
        if not os.access(self.db_dir, os.W_OK):  # a read-only index answers queries all the same
            log.debug("refined rows not written back: %s is read-only", self.db_dir)
            self.refiner.fine.clear()
            return 0
        from recall_cli.storage.lock import WriterLock

        try:
            manifest = Manifest(self.db_dir, create=False)
            try:
                if self.writes_locked:  # `recall watch` compacts on the bound itself, when idle
                    return self.refiner.write_back(manifest)
                with WriterLock(self.db_dir, "query"):
                    written = self.refiner.write_back(manifest)
                    if written:
                        self._compact_if_grown()
                    return written
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


def _upgrade_progress():
    """A progress line on stderr while an old index gains its text side, when stderr is a terminal."""
    import sys

    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        sys.stderr.write(f"\rrecall: adding keyword search: {done}/{total} rows")
        if done >= total:
            sys.stderr.write("\n")

    return show


RESULT_FIELDS = (
    "path",
    "score",
    "similarity",
    "keyword_score",
    "modality",
    "chunk",
    "snippet",
    "refined",
    "exit_block",
)


def _result(row: dict) -> dict:
    """What a result shows (output.py prints it), the same fields whichever side found it."""
    result = {key: row.get(key) for key in RESULT_FIELDS}
    result["refined"] = bool(result["refined"])
    result["meta"] = result_meta(row)
    for key in ("similarity", "keyword_score"):
        if result[key] is not None:
            result[key] = round(float(result[key]), 6)
    return result


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
            "meta": row.get("meta"),
        }
        for row in ordered
    ]
