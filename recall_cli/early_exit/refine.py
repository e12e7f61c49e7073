"""Speculative fine-grained retrieval (DESIGN "The idea that makes it fast", step 5).  Steps 1-2
(candidates) are candidates.py's; steps 3-5 are this module's.

Query time, for one query vector (always embedded with the base model at full depth):

1. **Candidates per exit group.**  The rows are split into groups: one per (modality, exit block)
   for rows still holding a coarse embedding, and one for rows already refined (or indexed at full
   depth).  Each group is searched on its own, so shallow exits cannot crowd out deep ones or the
   reverse.  Rule: with `wanted` = offset + limit results, a pool of P = max(4 * wanted, 32) rows
   (x4 with --exact) is shared out in proportion to group size, and every group gets at least
   `wanted` (enough to fill the page on its own):  k_g = min(n_g, max(wanted, ceil(P * n_g / N))).
   If the merged rows cover fewer than `wanted` files (many chunks per file), P doubles and the
   groups are searched again.
   With refinement on, every waiting group also gives at least its best min(n_g, R) rows, R =
   max(50, 5 * wanted), so the R best waiting rows of the index are among the candidates.
2. **Merge.**  Candidates are merged by their rank inside their own group relative to that group's
   share (rank_g / k_g), ties by coarse score.  The rows a first pass refines are the R waiting
   candidates with the best coarse score, whatever their group (candidates.to_refine: measured
   better than each group's best by rank / share; --exact refines every candidate instead).
3. **Refine.**  Best first, rows that are not refined yet are refined in batches: the INT4 cache
   blob is dequantised (quant.decode_blob) and the base model resumes at the blob's block
   (quant.blob_info(blob)["block"], which may be earlier than the row's exit_block for healed rows)
   up to full depth (encode.resume, grouped by resume block).  Rows whose cache was released are
   re-encoded from the file at full depth when the file is still there unchanged (same size and
   mtime); otherwise they are skipped (they keep their coarse score).
4. **Budget.**  Refinement stops when the next batch would not fit in the latency budget
   (`--budget SECONDS`, default DEFAULT_BUDGET_S).  The cost per candidate is measured as it goes
   (seconds per remaining block x token, kept per model for the life of the process); the first
   batch of a process is one candidate, to measure it.  `--exact`: no budget, every candidate of
   the (wider) pool is refined.  `--no-refine`: candidates are ranked by their stored scores.
5. **Re-rank and write back.**  Refined rows are scored with their fine embedding; files are
   ranked by their best row.  Every fine embedding is written back (vector = fine, refined = true,
   cache released, exit_block kept as the block the row really stopped at; the manifest's
   unit_exits follow), only onto rows whose content hash has not changed meanwhile.

Idle time: `refine_idle` (the idle work `recall watch` and the query server run through
query/idle.py) refines rows waiting for refinement, cached rows first, shallowest exits first.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recall_cli.modalities import batch_size
from recall_cli.paths import real_path
from recall_cli.storage.sqlfilter import sql_in

log = logging.getLogger("recall")

# Default latency budget for refinement in an interactive query.  Measured (benchmarks/
# bench_speculative.py): MiniLM on a 2-core CPU refines ~100-200 candidates/s from a mid exit, so
# 0.5 s covers most or all of the 50 rows a 10-result query refines at most (candidates.refine_limit;
# rows from shallow exits cost more); an ImageBind-Huge photo costs ~2 s on
# that CPU (a handful of ms on a GPU), so on CPU the budget refines only the first one or two.
DEFAULT_BUDGET_S = 0.5

_RATE: dict[str, list] = {}  # model name -> [seconds, work units, chunks measured] (latest chunk)


@dataclass
class RefineReport:
    candidates: int = 0
    refined: int = 0
    reencoded: int = 0
    skipped: int = 0
    seconds: float = 0.0
    fine: dict = field(default_factory=dict)  # row id -> fine vector (np.float32)
    skipped_ids: list = field(default_factory=list)  # file gone or changed: could not refine


# ------------------------------------------------------------------------------------------------
# refinement
# ------------------------------------------------------------------------------------------------


def _work(blocks: int, tokens: int) -> float:
    return max(blocks, 1) * max(tokens, 1)


class Refiner:
    """Refines rows of one store with one (base) model; remembers fine vectors until written."""

    def __init__(self, model, store):
        self.model, self.store = model, store
        self.fine: dict[str, np.ndarray] = {}  # id -> fine vector, not written back yet
        self.rows: dict[str, dict] = {}  # id -> candidate row (path, hash, ...) of those

    def refine(self, rows: list[dict], budget_s: float | None) -> RefineReport:
        """Refine `rows` (priority order) within budget_s seconds (None: all)."""
        report = RefineReport(candidates=len(rows))
        todo = [row for row in rows if row["id"] not in self.fine]
        for row in rows:
            if row["id"] in self.fine:
                report.fine[row["id"]] = self.fine[row["id"]]
        if not todo or (budget_s is not None and budget_s <= 0):
            return report
        started = time.perf_counter()
        blobs = self._blobs([row["id"] for row in todo])
        from recall_cli.early_exit.quant import CacheFormatError, blob_info

        plans = []  # (row, blob, resume block, tokens)
        for row in todo:
            blob = blobs.get(row["id"])
            info = None
            if blob:
                try:
                    info = blob_info(blob)
                except CacheFormatError:
                    blob = None
            plans.append((row, blob, info["block"] if info else 0, info["tokens"] if info else 0))
        rate = _RATE.setdefault(self.model.name, [0.0, 0.0, 0])
        typical = int(np.median([t for *_, t in plans if t])) if any(t for *_, t in plans) else 128
        index = 0
        while index < len(plans):
            take = []
            if budget_s is None:
                take = plans[index : index + batch_size(plans[index][0]["modality"])]
            else:
                remaining = budget_s - (time.perf_counter() - started)
                if remaining <= 0:
                    break
                if rate[2] < 2:  # measure first, twice: the first call of a process pays warm-up
                    take = plans[index : index + 1]
                else:
                    cost = 0.0
                    for plan in plans[index : index + batch_size(plans[index][0]["modality"])]:
                        row, blob, block, tokens = plan
                        blocks = int(row["depth"]) - block if blob else int(row["depth"])
                        cost += rate[0] / rate[1] * _work(blocks, tokens or typical) * (1 if blob else 2)
                        if cost > remaining:
                            break
                        take.append(plan)
                    if not take:
                        break
            t0 = time.perf_counter()
            done, work = self._run_threads(take, report)
            if work:
                rate[:] = [time.perf_counter() - t0, work, rate[2] + 1]  # the latest chunk's cost
            index += len(take)
        report.seconds = time.perf_counter() - started
        return report

    def _blobs(self, ids: list[str]) -> dict[str, bytes]:
        out = {}
        for start in range(0, len(ids), 200):
            chunk = ids[start : start + 200]
            rows = (
                self.store.table.search()
                .where(sql_in("id", chunk) + " AND cache IS NOT NULL")
                .select(["id", "cache"])
                .limit(None)
                .to_arrow()
                .to_pylist()
            )
            out.update({row["id"]: row["cache"] for row in rows})
        return out

    def _run_threads(self, plans, report: RefineReport) -> tuple[int, float]:
        """On a CPU, refinement runs on one thread like query encoding (query/embed.py):
        measured here, a few candidates on two threads of a busy 2-core CPU stall 30x longer."""
        import torch

        device = getattr(self.model, "device", None)
        if device is not None and getattr(device, "type", str(device)) != "cpu":
            return self._run(plans, report)
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._run(plans, report)
        finally:
            torch.set_num_threads(previous)

    def _run(self, plans, report: RefineReport) -> tuple[int, float]:
        from recall_cli.early_exit.encode import resume
        from recall_cli.early_exit.quant import decode_blob

        work = 0.0
        cached: dict[str, list] = {}
        for row, blob, block, tokens in plans:
            if blob:
                cached.setdefault(row["modality"], []).append((row, blob, block, tokens))
        for modality, items in cached.items():
            states = [decode_blob(blob, device=self.model.device) for _, blob, _, _ in items]
            vectors = resume(self.model, modality, states, [block for _, _, block, _ in items]).numpy()
            for (row, _, block, tokens), vector in zip(items, vectors, strict=True):
                self._keep(row, vector, report)
                work += _work(int(row["depth"]) - block, tokens)
        by_file: dict[str, list[dict]] = {}
        for row, blob, _, _ in plans:
            if not blob:
                by_file.setdefault(row["path"], []).append(row)
        for path, rows in by_file.items():
            vectors = self._reencode(path, rows)
            if vectors is None:
                report.skipped += len(rows)
                report.skipped_ids += [row["id"] for row in rows]
                continue
            for row, (vector, tokens) in zip(rows, vectors, strict=True):
                if vector is None:
                    report.skipped += 1
                    report.skipped_ids.append(row["id"])
                    continue
                self._keep(row, vector, report)
                report.reencoded += 1
                work += 2 * _work(int(row["depth"]), tokens)
        return len(plans), work

    def _keep(self, row: dict, vector, report: RefineReport) -> None:
        vector = np.asarray(vector, dtype=np.float32)
        self.fine[row["id"]] = vector
        self.rows[row["id"]] = row
        report.fine[row["id"]] = vector
        report.refined += 1

    def _reencode(self, path: str, rows: list[dict]):
        """Full-depth vectors of these rows' chunks from the file, or None when the file is gone
        or changed since it was indexed (its rows are stale; the indexer will redo them)."""
        path = real_path(path)  # rows hold the stored form of names that are not UTF-8
        try:
            info = os.stat(path)
        except OSError:
            return None
        row0 = rows[0]
        if (row0.get("size") is not None and info.st_size != row0["size"]) or (
            row0.get("mtime_ns") is not None and info.st_mtime_ns != row0["mtime_ns"]
        ):
            return None
        try:
            units = {unit.chunk: unit for unit in self.model.file_units(Path(path), row0["modality"])}
        except Exception as error:  # a file that cannot be decoded now is skipped
            log.debug("refine: cannot re-encode %s: %s", path, error)
            return None
        wanted = [units.get(int(row["chunk"])) for row in rows]
        present = [unit for unit in wanted if unit is not None]
        if not present:
            return None
        vectors = iter(self.model.encode(row0["modality"], [unit.data for unit in present]).float().cpu().numpy())
        return [(next(vectors), 256) if unit is not None else (None, 0) for unit in wanted]

    # --- write-back -------------------------------------------------------------------------
    def pending(self) -> int:
        return len(self.fine)

    def write_back(self, manifest) -> int:
        """Store every fine vector computed so far (module docstring, step 5); returns rows
        written.  The caller holds the writer lock (or is the watcher that holds it)."""
        import pyarrow as pa

        from recall_cli.early_exit.cache import refresh_exits

        if not self.fine:
            return 0
        ids = list(self.fine)
        full_rows = []
        for start in range(0, len(ids), 200):
            full_rows += (
                self.store.table.search()
                .where(sql_in("id", ids[start : start + 200]))
                .limit(None)
                .to_arrow()
                .to_pylist()
            )
        rows = []
        for row in full_rows:
            seen = self.rows.get(row["id"], {})
            if seen.get("hash") is not None and row["hash"] != seen["hash"]:
                continue  # re-indexed meanwhile: the fine vector is of the old content
            row.update(vector=self.fine[row["id"]].tolist(), refined=True, cache=None)
            rows.append(row)
        if rows:
            data = pa.Table.from_pylist(rows, schema=self.store.table.schema)
            (
                self.store.table.merge_insert("id")
                .when_matched_update_all(where="target.hash = source.hash")
                .execute(data)
            )
            for path in sorted({row["path"] for row in rows}):
                refresh_exits(self.store, manifest, path)
        self.fine.clear()
        self.rows.clear()
        return len(rows)


# ------------------------------------------------------------------------------------------------
# idle refinement (recall watch)
# ------------------------------------------------------------------------------------------------

_UNREFINABLE: set[str] = set()  # ids refine_idle could not refine (file gone or changed)


def refine_idle(db_dir: Path, should_stop, budget_s: float, model_loader=None) -> bool:
    """Idle work for `recall watch` and the query server (query/idle.py schedules it): refine rows
    waiting for refinement (cached rows first, shallowest exit first, then rows whose cache was
    released) for at most budget_s seconds, and write them back.  The caller holds the writer lock.
    `model_loader`: gives the caller's encoder (else the index's model is loaded once per process),
    called only when rows wait, so an index with nothing to refine never loads torch.  True
    when rows were refined (call again), False when nothing is left that can be refined."""
    from recall_cli.models import load_model
    from recall_cli.storage.manifest import Manifest
    from recall_cli.storage.table import Store

    db_dir = Path(db_dir)
    manifest = Manifest(db_dir, create=False)
    try:
        name, version = manifest.get_meta("model"), manifest.get_meta("model_version")
        if (
            not name
            or not version
            or not any(units - refined > 0 for _, _, _, units, refined, _, _ in manifest.exit_summary())
        ):
            return False
        store = Store(db_dir)
        if store.table is None:
            return False
        model = load_model(name) if model_loader is None else model_loader()
        if model.version != version:
            return False
        skip = f" AND NOT ({sql_in('id', sorted(_UNREFINABLE)[:500])})" if _UNREFINABLE else ""
        columns = ["id", "path", "chunk", "modality", "hash", "size", "mtime_ns", "exit_block", "depth"]
        rows = []
        for clause in ("NOT refined AND cache IS NOT NULL", "NOT refined AND cache IS NULL"):
            found = store.table.search().where(clause + skip).select(columns).limit(256).to_arrow().to_pylist()
            rows += sorted(found, key=lambda r: (r["exit_block"], r["path"], r["chunk"]))
            if len(rows) >= 64:
                break
        if not rows or should_stop():
            return False
        refiner = Refiner(model, store)
        report = RefineReport()
        unrefinable = len(_UNREFINABLE)
        started = time.perf_counter()
        for start in range(0, len(rows), 8):
            if should_stop() or time.perf_counter() - started >= budget_s:
                break
            left = budget_s - (time.perf_counter() - started)
            part = refiner.refine(rows[start : start + 8], left)
            report.refined += part.refined
            if part.refined == 0 and not part.skipped_ids:
                break
            _UNREFINABLE.update(part.skipped_ids)
        written = refiner.write_back(manifest)
        log.debug("idle refinement: %d rows refined and written", written)
        return written > 0 or len(_UNREFINABLE) > unrefinable
    finally:
        manifest.close()
