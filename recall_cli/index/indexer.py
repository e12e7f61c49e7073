"""`recall index`: bring the index in line with the files under some roots.

A run has three phases:
  1. plan   - scan the roots and compare size+mtime with the manifest (stat only; no lancedb, no
              torch: an unchanged tree stops here);
  2. apply  - for each new or changed file: hash it; a hash already indexed elsewhere (a move or a
              copy) copies those rows; otherwise decode, encode and write.  Rows go to LanceDB
              first and the manifest second, in batches, so an interrupted run is only *behind*;
  3. prune  - files that vanished leave the index (after phase 2, so moves can copy first).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from recall_cli.early_exit.calibrate import start_calibration
from recall_cli.errors import first_line, storage_error
from recall_cli.index.decode_ahead import DecodeAhead
from recall_cli.index.hashing import file_hash
from recall_cli.index.media import media_facts, refresh_text_side
from recall_cli.index.options import IndexOptions, IndexSummary, bind_model, check_model_version, check_roots
from recall_cli.index.overlap import EncodedBatch, EncoderThread, PendingBatch, encode_now, overlap_enabled
from recall_cli.index.pipeline import unit_row
from recall_cli.index.plan import changes_at_paths, files_to_apply, gone_paths
from recall_cli.index.reuse import copy_rows
from recall_cli.index.scan import FileEntry, scan_roots
from recall_cli.index.sniff import sniff_path
from recall_cli.models import MODEL_MODALITIES
from recall_cli.paths import display_path
from recall_cli.profiling import stage, timed
from recall_cli.storage.layout import TABLE_DIR, prepare_index_dir
from recall_cli.storage.lock import WriterLock
from recall_cli.storage.manifest import FileRecord, Manifest

log = logging.getLogger("recall")

FLUSH_UNITS = 256  # units encoded and written per batch: bounds memory and lost work on a crash
FLUSH_FILES = 64
TEXT_FLUSH_UNITS, TEXT_FLUSH_FILES = 1024, 256  # strings, not decoded media: less padding, less to compact
if os.environ.get("RECALL_FLUSH_UNITS"):  # smaller batches: tests make kill -9 land during writes
    FLUSH_UNITS = FLUSH_FILES = TEXT_FLUSH_UNITS = TEXT_FLUSH_FILES = max(1, int(os.environ["RECALL_FLUSH_UNITS"]))


def index_roots(
    roots: list[str],
    db_dir: Path,
    options: IndexOptions = IndexOptions(),
    progress: Callable[[int, int], None] | None = None,
) -> IndexSummary:
    started = time.perf_counter()
    roots = check_roots(roots)
    prepare_index_dir(db_dir)  # a read-only or full index fails here, before anything is written
    with WriterLock(db_dir, "index"):
        summary = index_locked(db_dir, roots, options, progress)
    summary.seconds = time.perf_counter() - started
    return summary


def index_locked(
    db_dir: Path,
    roots: list[str],
    options: IndexOptions = IndexOptions(),
    progress: Callable[[int, int], None] | None = None,
    paths: list[str] | None = None,
    path_filter=None,
    should_stop: Callable[[], bool] | None = None,
    maintain: bool = True,
) -> IndexSummary:
    """One index pass by a caller that already holds the WriterLock (index_roots, `recall watch`).

    `paths` None: the whole roots (checked to exist).  Otherwise only those paths (watch events):
    each is stat'ed; a file is planned as usual, a directory is walked (and recorded files under it
    that are gone are pruned), an absent path is pruned with everything recorded under it.  Paths
    under a root that is missing are left alone.  `should_stop` ends the apply phase early (what was
    flushed stays; pruning waits for a complete pass)."""
    started = time.perf_counter()
    from recall_cli.models.mediatext import ocr

    manifest = Manifest(db_dir)
    ocr_before = ocr.set_enabled(None if options.ocr else False)
    try:
        model_name = bind_model(manifest, options.model)
        manifest.check_vectors_present()
        run = _IndexRun(db_dir, manifest, model_name, options, progress)
        run.should_stop = should_stop or (lambda: False)
        run.maintain = maintain
        if paths is None:
            summary = run.execute(roots)
        else:
            from recall_cli.index.scan import PathFilter

            summary = run.execute_paths(paths, path_filter or PathFilter(roots, options.scan))
        manifest.set_meta("last_index_at", str(time.time()))
    except Exception as error:  # a full or read-only disk: one clear line (what was written stays)
        mapped = storage_error(error, db_dir)
        if mapped is None or mapped is error:
            raise
        raise mapped from error
    finally:
        manifest.close()
        ocr.set_enabled(ocr_before)
    summary.seconds = time.perf_counter() - started
    return summary


class _IndexRun:
    def __init__(
        self,
        db_dir: Path,
        manifest: Manifest,
        model_name: str,
        options: IndexOptions,
        progress: Callable[[int, int], None] | None,
    ):
        self.db_dir = db_dir
        self.manifest = manifest
        self.model_name = model_name
        self.options = options
        self.progress = progress or (lambda done, total: None)
        self.summary = IndexSummary()
        self._store = None
        self._model = None
        self.pending = PendingBatch()  # decoded, not yet encoded
        self.encoder = EncoderThread()  # the batch before it, encoding while this one is gathered
        self.wrote = False
        self.should_stop: Callable[[], bool] = lambda: False
        self.maintain = True  # compact after writing (`recall watch` does it when idle instead)
        self._policy = None
        self._precision_unchecked = False  # an automatic bf16 not yet compared with fp32 on this index
        if options.full:
            manifest.set_meta("full_depth", "1")

    @property
    def policy(self):
        """The exit policy of this run: full depth for a --full index, else policy.parse_policy."""
        if self._policy is None:
            from recall_cli.early_exit.policy import FullDepthPolicy, parse_policy

            if self.manifest.get_meta("full_depth") == "1":
                self._policy = FullDepthPolicy()
            else:
                self._policy = parse_policy(self.options.exit_policy, self.db_dir, self.model_name)
        return self._policy

    # lazily opened: an unchanged tree never imports lancedb or torch
    @property
    def store(self):
        if self._store is None:
            from recall_cli.storage.table import Store

            self._store = Store(self.db_dir)
            dim = self.manifest.get_meta("dim")
            self._store.check(int(dim) if dim else None, self.model_name, scan_rows=True)
            if self._store.table is not None and not self._store.has_text_side:
                self._store.add_text_side(self.progress)
            if self._store.table is not None and not self._store.has_meta_side:
                self._store.add_meta_side()
        return self._store

    @property
    def model(self):
        if self._model is None:
            from recall_cli.index.precision import load_index_model

            self._model, self._precision_unchecked = load_index_model(self.manifest, self.model_name, self.options)
            check_model_version(self.manifest, self._model)
            if self.store.table is None:
                from recall_cli.storage.table import Store

                self._store = Store(self.db_dir, dim=self._model.dim)
            self.store.check(self._model.dim, self.model_name)
        return self._model

    def execute(self, roots: list[str]) -> IndexSummary:
        report = timed("scan", scan_roots, roots, self.options.scan)
        known = self.manifest.files_under(roots)
        gone = gone_paths(known, {entry.path for entry in report.files}, report.problems)
        self._record_scan_problems(report.problems, roots)
        return self._apply_all(self._plan(report.files, known), gone, known)

    def _apply_all(self, todo, gone: list[str], known: dict[str, FileRecord]) -> IndexSummary:
        stopped = False
        self.calibration, todo = start_calibration(self, todo)  # a new index heals its exits on its first files
        self.decode_ahead = DecodeAhead(todo, TEXT_FLUSH_FILES)
        try:
            for done, (entry, record) in enumerate(todo, 1):
                if self.should_stop():
                    stopped = True
                    break
                self._apply(entry, record)
                self.progress(done, len(todo))
            self._flush()
        finally:  # an interrupt leaves at once; an error waits for the batch in flight
            self.encoder.close(wait=not isinstance(sys.exc_info()[1], KeyboardInterrupt | SystemExit))
        if not stopped:
            self._prune(gone, known)
        if self.wrote or self.options.cache_budget:
            from recall_cli.early_exit.cache import enforce_budget, resolve_budget

            budget = resolve_budget(self.manifest, self.options.cache_budget)
            if self.wrote:
                timed("cache budget", enforce_budget, self.store, self.manifest, budget)
        if self.wrote and self.maintain:
            timed("compaction", self.store.maintain)
        return self.summary

    def execute_paths(self, paths: list[str], path_filter) -> IndexSummary:
        """Apply changes at some paths only (see index_locked)."""
        found = changes_at_paths(self.manifest, paths, path_filter)
        self._record_scan_problems(found.report.problems, found.roots)
        return self._apply_all(self._plan(found.entries, found.known), found.gone, found.known)

    def _plan(self, entries: list[FileEntry], known: dict[str, FileRecord]):
        self.summary.scanned = len(entries)
        todo = files_to_apply(entries, known, self.options.retry_failed)
        self.summary.unchanged += len(entries) - len(todo)
        return todo

    def _record_scan_problems(self, problems: list[tuple[str, str]], roots: list[str]) -> None:
        records = []
        for path, reason in problems:
            root = next((r for r in roots if path.startswith(r.rstrip("/") + "/")), roots[0])
            records.append(FileRecord(path, root, 0, 0, None, None, "error", reason, 0))
            self._fail(path, reason)
        self.manifest.upsert(records)

    def _fail(self, path: str, reason: str) -> None:
        self.summary.failed += 1
        self.summary.failures.append((path, reason))
        log.warning("%s: %s", display_path(path), reason)

    def _apply(self, entry: FileEntry, record: FileRecord | None) -> None:
        try:
            content_hash = timed("hashing", file_hash, entry.path)
            modality = timed("sniffing", sniff_path, Path(entry.path), entry.size)
        except FileNotFoundError:
            # gone since the scan (deleted, or mid-replace by an editor): what a later scan would
            # decide, now; if it comes back, the next run or watch event indexes it
            self._prune([entry.path], {entry.path: record} if record is not None else {})
            return
        except OSError as error:
            self._finish_failed(entry, None, None, f"cannot read: {error.strerror or error}")
            return
        if entry.size == 0:
            self._finish_failed(entry, content_hash, modality, "empty file (0 bytes)")
            return
        if record is not None and record.stale_media_text:
            refreshed = _record(entry, content_hash, record.modality, "ok", units=record.units)
            if refresh_text_side(self, record, refreshed):  # an older index's media: vectors kept
                return
        if (
            record is not None
            and record.hash == content_hash
            and record.status != "error"
            and not record.stale_media_text
        ):
            # touched, not changed: only the stat fields move
            self.manifest.upsert(
                [_record(entry, content_hash, record.modality, record.status, record.error, record.units)]
            )
            self.summary.unchanged += 1
            return
        if modality is None or modality not in MODEL_MODALITIES[self.model_name]:
            reason = "unknown file type" if modality is None else f"{self.model_name} does not embed {modality}"
            if record is not None:
                self._drop_rows(entry.path)
            self.manifest.upsert([_record(entry, content_hash, modality, "skipped", reason)])
            self.summary.skipped += 1
            return
        if copy_rows(self, entry, content_hash, modality):
            return
        model = self.model  # loading it (or finding the index unusable) is not this file's problem
        try:
            units = timed("decoding", self.decode_ahead.units, entry, modality, model)  # text side too
        except Exception as error:  # one bad file never stops the run
            self._finish_failed(entry, content_hash, modality, _one_line(error))
            return
        if not units:
            self._finish_failed(entry, content_hash, modality, "nothing to embed in file")
            return
        self.pending.files[entry.path] = (entry, content_hash, modality, record is None)
        self.pending.units.extend((entry.path, unit) for unit in units)
        self.pending.text_only = self.pending.text_only and all(isinstance(unit.data, str) for unit in units)
        if self._pending_full():
            self._flush(drain=False)

    def _pending_full(self) -> bool:
        text, units, files = self.pending.text_only, len(self.pending.units), len(self.pending.files)
        return units >= (TEXT_FLUSH_UNITS if text else FLUSH_UNITS) or files >= (
            TEXT_FLUSH_FILES if text else FLUSH_FILES
        )

    def _flush(self, drain: bool = True) -> None:
        """Encode the pending units and commit them, after the batch encoded before them.  Not
        `drain`: the batch encodes in the encoder thread (overlap.py) and is committed by the next
        flush, so the next files are decoded, and this batch's predecessor written, meanwhile."""
        from functools import partial

        from recall_cli.index.pipeline import encode_units
        from recall_cli.index.precision import check_precision

        batch, self.pending = self.pending, PendingBatch()
        ready = [self.encoder.result()]  # in batch order: the one encoded before this one first
        if batch.units:
            units, model = [unit for _, unit in batch.units], self.model
            if self._precision_unchecked:  # checked on the first units this index encodes
                self._model, self._precision_unchecked = (
                    check_precision(self.manifest, self.options, model, units),
                    False,
                )
            encode = partial(encode_units, self._model, policy=self.policy)
            # a calibration still gathering its sample decides the next batch's policy: in series
            if not drain and overlap_enabled() and not getattr(self.calibration, "collecting", False):
                self.encoder.start(batch, encode)
            else:
                ready.append(encode_now(batch, encode))
        for encoded in ready:
            if encoded is not None:
                self._commit(encoded)

    def _commit(self, batch: EncodedBatch) -> None:
        """One encoded batch into the table, then the manifest."""
        pending_units, pending_files, encoded = batch.batch.units, batch.batch.files, batch.encoded
        rows, errors, counts = [], {}, {}
        for (path, unit), result in zip(pending_units, encoded, strict=True):
            if result.vector is None:
                errors.setdefault(path, result.error)
                continue
            entry, content_hash, modality, _ = pending_files[path]
            counts[path] = counts.get(path, 0) + 1
            rows.append(unit_row(entry, content_hash, unit, result, self.model_name))
        rows = [row for row in rows if row["path"] not in errors]
        done = {path: (pending_files[path][1], count) for path, count in counts.items() if path not in errors}
        # one commit: the new rows, and the older rows of those files (another hash, chunks past
        # the new count) gone, so a kill never leaves a file half old and half new
        timed("LanceDB write", self.store.upsert, rows, whole_files=done)
        records = []
        for path, (entry, content_hash, modality, is_new) in pending_files.items():
            if path in errors:
                self._drop_rows(path)
                records.append(_record(entry, content_hash, modality, "error", errors[path]))
                self._fail(path, errors[path])
                continue
            records.append(_record(entry, content_hash, modality, "ok", units=counts[path]))
            if is_new:
                self.summary.added += 1
            else:
                self.summary.updated += 1
        from recall_cli.storage.manifest import exit_groups

        with stage("manifest write"), self.manifest.transaction():  # records and their exit rows, or none
            self.manifest.upsert(records)
            for path in done:
                self.manifest.set_exits(path, *exit_groups([row for row in rows if row["path"] == path]))
            self.manifest.set_media_facts(media_facts(rows))
        self.summary.units_encoded += len(rows)
        self.summary.blocks_run += sum(row["exit_block"] for row in rows)
        self.summary.blocks_full += sum(row["depth"] for row in rows)
        self.summary.cache_bytes += sum(len(row["cache"]) for row in rows if row["cache"])
        self.wrote = True
        if self.calibration and self.calibration.observe(pending_units, encoded, batch.seconds, self.model):
            self._policy = None  # calibration healed the exits: parse_policy finds them from the next flush

    def _finish_failed(self, entry: FileEntry, content_hash, modality, reason: str) -> None:
        self._drop_rows(entry.path)
        self.manifest.upsert([_record(entry, content_hash, modality, "error", reason)])
        self._fail(entry.path, reason)

    def _drop_rows(self, path: str) -> None:
        """A file that no longer embeds (now broken, or now another type) loses its old rows."""
        if (self.db_dir / TABLE_DIR).exists() and self.store.table is not None:
            self.store.delete_paths([path])

    def _prune(self, gone: list[str], known: dict[str, FileRecord]) -> None:
        if not gone:
            return
        embedded = [path for path in gone if path in known and known[path].status == "ok"]
        if embedded and self.store.table is not None:
            self.store.delete_paths(embedded)
            self.wrote = True
        self.manifest.delete(gone)
        self.summary.removed += sum(path in known for path in gone)


def _record(entry: FileEntry, content_hash, modality, status: str, error: str | None = None, units: int = 0):
    """The manifest record of a file as scanned now, with what became of it."""
    return FileRecord(entry.path, entry.root, entry.size, entry.mtime_ns, content_hash, modality, status, error, units)


def _one_line(error: Exception) -> str:
    from recall_cli.models.base import DecodeError

    message = first_line(error)
    return message if isinstance(error, DecodeError) else f"{type(error).__name__}: {message}"
