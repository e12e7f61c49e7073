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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import REBUILD_HINT, RecallError, first_line, storage_error
from .hashing import file_hash
from .lock import WriterLock
from .manifest import TABLE_DIR, FileRecord, Manifest
from .models import DEFAULT_MODEL, MODEL_MODALITIES, check_model_name
from .paths import display_path, json_safe, prepare_index_dir
from .scan import FileEntry, ScanOptions, normalize_root, scan_roots
from .sniff import sniff_path

log = logging.getLogger("recall")

FLUSH_UNITS = 256  # units encoded and written per batch: bounds memory and lost work on a crash
FLUSH_FILES = 64
if os.environ.get("RECALL_FLUSH_UNITS"):  # smaller batches: tests make kill -9 land during writes
    FLUSH_UNITS = FLUSH_FILES = max(1, int(os.environ["RECALL_FLUSH_UNITS"]))
SNIPPET_CHARS = 2000  # a whole chunk of text fits: results can show the part that matched


@dataclass
class IndexSummary:
    scanned: int = 0
    unchanged: int = 0
    added: int = 0
    updated: int = 0
    moved: int = 0  # new paths whose content was already indexed (no re-encode)
    removed: int = 0
    skipped: int = 0  # not a type the model embeds
    failed: int = 0
    units_encoded: int = 0
    blocks_run: int = 0  # encoder blocks run for the encoded units (early exit: fewer than full)
    blocks_full: int = 0  # what full depth would have run
    cache_bytes: int = 0  # INT4 activation cache written this run
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "failures"} | {
            "failures": [json_safe({"path": path, "error": error}) for path, error in self.failures]}


@dataclass
class IndexOptions:
    model: str | None = None  # None: the index's model, or the default for a new index
    scan: ScanOptions = field(default_factory=ScanOptions)
    retry_failed: bool = False
    device: str | None = None
    dtype: str | None = None
    weights: str | None = None
    full: bool = False  # --full: this index runs every block for every file, from now on
    exit_policy: str | None = None  # exits.parse_policy spec; None: $RECALL_EXIT_POLICY or auto
    cache_budget: str | None = None  # e.g. "2GiB"; stored in the index


def bind_model(manifest: Manifest, requested: str | None) -> str:
    """The model this index uses; a new index takes `requested` (or the default)."""
    stored = manifest.get_meta("model")
    if stored is None:
        name = check_model_name(requested or DEFAULT_MODEL)
        manifest.set_meta("model", name)
        manifest.set_meta("created_at", str(time.time()))
        return name
    if requested and requested != stored:
        raise RecallError(f"this index was built with model {stored!r}, not {requested!r}; "
                          f"drop --model, or use another --db for {requested}, or replace this index "
                          f"with `recall index --rebuild --model {requested} PATH...`")
    return stored


def check_model_version(manifest: Manifest, model) -> None:
    stored = manifest.get_meta("model_version")
    if stored is None:
        manifest.set_meta("model_version", model.version)
        manifest.set_meta("dim", str(model.dim))
    elif stored != model.version:
        raise RecallError(f"this index was built with {stored}, but the installed model is "
                          f"{model.version}; {REBUILD_HINT}, or use another --db")


def check_roots(roots: list[str]) -> list[str]:
    """Every root must exist: a missing or unmounted root is an error, never 'all deleted'."""
    checked = []
    for root in roots:
        resolved = normalize_root(root)
        if not os.path.isdir(resolved):
            what = "is not a directory" if os.path.exists(resolved) else "does not exist"
            raise RecallError(f"{root} {what}; give directories to index (is a drive unmounted?)")
        checked.append(resolved)
    return checked


def index_roots(roots: list[str], db_dir: Path, options: IndexOptions = IndexOptions(),
                progress: Callable[[int, int], None] | None = None) -> IndexSummary:
    started = time.perf_counter()
    roots = check_roots(roots)
    prepare_index_dir(db_dir)  # a read-only or full index fails here, before anything is written
    with WriterLock(db_dir, "index"):
        summary = index_locked(db_dir, roots, options, progress)
    summary.seconds = time.perf_counter() - started
    return summary


def index_locked(db_dir: Path, roots: list[str], options: IndexOptions = IndexOptions(),
                 progress: Callable[[int, int], None] | None = None, paths: list[str] | None = None,
                 path_filter=None, should_stop: Callable[[], bool] | None = None,
                 maintain: bool = True) -> IndexSummary:
    """One index pass by a caller that already holds the WriterLock (index_roots, `recall watch`).

    `paths` None: the whole roots (checked to exist).  Otherwise only those paths (watch events):
    each is stat'ed; a file is planned as usual, a directory is walked (and recorded files under it
    that are gone are pruned), an absent path is pruned with everything recorded under it.  Paths
    under a root that is missing are left alone.  `should_stop` ends the apply phase early (what was
    flushed stays; pruning waits for a complete pass)."""
    started = time.perf_counter()
    manifest = Manifest(db_dir)
    try:
        model_name = bind_model(manifest, options.model)
        manifest.check_vectors_present()
        run = _IndexRun(db_dir, manifest, model_name, options, progress)
        run.should_stop = should_stop or (lambda: False)
        run.maintain = maintain
        if paths is None:
            summary = run.execute(roots)
        else:
            from .scan import PathFilter

            summary = run.execute_paths(paths, path_filter or PathFilter(roots, options.scan))
        manifest.set_meta("last_index_at", str(time.time()))
    except Exception as error:  # a full or read-only disk: one clear line (what was written stays)
        mapped = storage_error(error, db_dir)
        if mapped is None or mapped is error:
            raise
        raise mapped from error
    finally:
        manifest.close()
    summary.seconds = time.perf_counter() - started
    return summary


class _IndexRun:
    def __init__(self, db_dir: Path, manifest: Manifest, model_name: str, options: IndexOptions,
                 progress: Callable[[int, int], None] | None):
        self.db_dir = db_dir
        self.manifest = manifest
        self.model_name = model_name
        self.options = options
        self.progress = progress or (lambda done, total: None)
        self.summary = IndexSummary()
        self._store = None
        self._model = None
        self.pending_units: list[tuple[str, object]] = []  # (path, Unit)
        self.pending_files: dict[str, tuple[FileEntry, str, str, bool]] = {}  # path -> entry, hash, modality, is_new
        self.wrote = False
        self.should_stop: Callable[[], bool] = lambda: False
        self.maintain = True  # compact after writing (`recall watch` does it when idle instead)
        self._policy = None
        if options.full:
            manifest.set_meta("full_depth", "1")

    @property
    def policy(self):
        """The exit policy of this run: full depth for a --full index, else exits.parse_policy."""
        if self._policy is None:
            from .exits import FullDepthPolicy, parse_policy

            if self.manifest.get_meta("full_depth") == "1":
                self._policy = FullDepthPolicy()
            else:
                self._policy = parse_policy(self.options.exit_policy, self.db_dir, self.model_name)
        return self._policy

    # lazily opened: an unchanged tree never imports lancedb or torch
    @property
    def store(self):
        if self._store is None:
            from .store import Store

            self._store = Store(self.db_dir)
            dim = self.manifest.get_meta("dim")
            self._store.check(int(dim) if dim else None, self.model_name, scan_rows=True)
        return self._store

    @property
    def model(self):
        if self._model is None:
            from .models import load_model

            self._model = load_model(self.model_name, self.options.device, self.options.dtype,
                                     self.options.weights)
            check_model_version(self.manifest, self._model)
            if self.store.table is None:
                from .store import Store

                self._store = Store(self.db_dir, dim=self._model.dim)
            self.store.check(self._model.dim, self.model_name)
        return self._model

    def execute(self, roots: list[str]) -> IndexSummary:
        report = scan_roots(roots, self.options.scan)
        known = self.manifest.files_under(roots)
        todo = self._plan(report.files, known)
        unreadable = [path for path, _ in report.problems]
        present = {entry.path for entry in report.files}  # built once: this loop sees every known file
        gone = [path for path in known if path not in present
                and not any(path == bad or path.startswith(bad + "/") for bad in unreadable)]
        self._record_scan_problems(report.problems, roots)
        return self._apply_all(todo, gone, known)

    def _apply_all(self, todo, gone: list[str], known: dict[str, FileRecord]) -> IndexSummary:
        stopped = False
        for done, (entry, record) in enumerate(todo, 1):
            if self.should_stop():
                stopped = True
                break
            self._apply(entry, record)
            self.progress(done, len(todo))
        self._flush()
        if not stopped:
            self._prune(gone, known)
        if self.wrote or self.options.cache_budget:
            from .cache import enforce_budget, resolve_budget

            budget = resolve_budget(self.manifest, self.options.cache_budget)
            if self.wrote:
                enforce_budget(self.store, self.manifest, budget)
        if self.wrote and self.maintain:
            self.store.maintain()
        return self.summary

    def execute_paths(self, paths: list[str], path_filter) -> IndexSummary:
        """Apply changes at some paths only (see index_locked)."""
        from .scan import ScanReport

        report, entries, known, gone = ScanReport(), {}, {}, set()
        live_roots = {root for root in path_filter.roots if os.path.isdir(root)}
        for path in sorted(set(paths)):
            root = path_filter.root_of(path)
            if root is None or root not in live_roots:
                continue  # outside the roots, or the root is missing/unmounted: never "all deleted"
            recorded = self.manifest.files_under([path]) | self.manifest.records([path])
            known.update(recorded)
            try:
                is_dir = os.path.isdir(path) and not os.path.islink(path)
            except OSError:
                is_dir = False
            if is_dir:
                sub = path_filter.walk(path)
                report.problems.extend(sub.problems)
                found = {entry.path: entry for entry in sub.files}
            else:
                entry = path_filter.file(path, report) if os.path.lexists(path) else None
                found = {path: entry} if entry is not None else {}
            entries.update(found)
            gone.update(recorded.keys() - found.keys())
        unreadable = [path for path, _ in report.problems]
        gone = sorted(path for path in gone if path not in entries and not any(
            path == bad or path.startswith(bad + "/") for bad in unreadable))
        known.update(self.manifest.records([path for path in entries if path not in known]))
        todo = self._plan(list(entries.values()), known)
        self._record_scan_problems(report.problems, sorted(live_roots) or path_filter.roots)
        return self._apply_all(todo, gone, known)

    def _plan(self, entries: list[FileEntry], known: dict[str, FileRecord]):
        todo = []
        self.summary.scanned = len(entries)
        for entry in entries:
            record = known.get(entry.path)
            unchanged = (record is not None and record.size == entry.size
                         and record.mtime_ns == entry.mtime_ns)
            if unchanged and not (self.options.retry_failed and record.status == "error"):
                self.summary.unchanged += 1
            else:
                todo.append((entry, record))
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
            content_hash = file_hash(entry.path)
            modality = sniff_path(Path(entry.path), entry.size)
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
        if record is not None and record.hash == content_hash and record.status != "error":
            # touched, not changed: only the stat fields move
            self.manifest.upsert([FileRecord(entry.path, entry.root, entry.size, entry.mtime_ns,
                                             content_hash, record.modality, record.status,
                                             record.error, record.units)])
            self.summary.unchanged += 1
            return
        if modality is None or modality not in MODEL_MODALITIES[self.model_name]:
            reason = "unknown file type" if modality is None else f"{self.model_name} does not embed {modality}"
            if record is not None:
                self._drop_rows(entry.path)
            self.manifest.upsert([FileRecord(entry.path, entry.root, entry.size, entry.mtime_ns,
                                             content_hash, modality, "skipped", reason, 0)])
            self.summary.skipped += 1
            return
        if self._copy_existing(entry, content_hash, modality, record):
            return
        model = self.model  # loading it (or finding the index unusable) is not this file's problem
        try:
            units = model.file_units(Path(entry.path), modality)
        except Exception as error:  # noqa: BLE001 - one bad file never stops the run
            self._finish_failed(entry, content_hash, modality, _one_line(error))
            return
        if not units:
            self._finish_failed(entry, content_hash, modality, "nothing to embed in file")
            return
        self.pending_files[entry.path] = (entry, content_hash, modality, record is None)
        self.pending_units.extend((entry.path, unit) for unit in units)
        if len(self.pending_units) >= FLUSH_UNITS or len(self.pending_files) >= FLUSH_FILES:
            self._flush()

    def _copy_existing(self, entry: FileEntry, content_hash: str, modality: str,
                       record: FileRecord | None) -> bool:
        """A file whose content is already indexed under another path (moved, renamed, copied)
        takes a copy of those rows instead of being encoded again."""
        for source in self.manifest.paths_with_hash(content_hash):
            if source == entry.path:
                continue
            rows = self.store.rows_for_path(source)
            if not rows or any(row["hash"] != content_hash for row in rows):
                continue
            for row in rows:
                row.pop("_distance", None)
                row.update(id=_unit_id(entry.path, row["chunk"]), path=entry.path, root=entry.root,
                           size=entry.size, mtime_ns=entry.mtime_ns, indexed_at=time.time())
            self.store.upsert(rows, whole_files=[entry.path])  # its older rows go in the same commit
            from .cache import exit_groups

            with self.manifest.transaction():  # the record and its exit rows, or neither
                self.manifest.upsert([FileRecord(entry.path, entry.root, entry.size, entry.mtime_ns,
                                                 content_hash, modality, "ok", None, len(rows))])
                self.manifest.set_exits(entry.path, *exit_groups(rows))
            self.summary.moved += 1
            self.wrote = True
            return True
        return False

    def _flush(self) -> None:
        if not self.pending_units:
            return
        from .pipeline import encode_units

        encoded = encode_units(self.model, [unit for _, unit in self.pending_units], policy=self.policy)
        rows, errors, counts = [], {}, {}
        for (path, unit), result in zip(self.pending_units, encoded):
            if result.vector is None:
                errors.setdefault(path, result.error)
                continue
            entry, content_hash, modality, _ = self.pending_files[path]
            counts[path] = counts.get(path, 0) + 1
            rows.append(self._row(entry, content_hash, unit, result))
        rows = [row for row in rows if row["path"] not in errors]
        done = {path: (self.pending_files[path][1], count) for path, count in counts.items()
                if path not in errors}
        # one commit: the new rows, and the older rows of those files (another hash, chunks past
        # the new count) gone, so a kill never leaves a file half old and half new
        self.store.upsert(rows, whole_files=done)
        records = []
        for path, (entry, content_hash, modality, is_new) in self.pending_files.items():
            if path in errors:
                self._drop_rows(path)
                records.append(FileRecord(path, entry.root, entry.size, entry.mtime_ns, content_hash,
                                          modality, "error", errors[path], 0))
                self._fail(path, errors[path])
                continue
            records.append(FileRecord(path, entry.root, entry.size, entry.mtime_ns, content_hash,
                                      modality, "ok", None, counts[path]))
            if is_new:
                self.summary.added += 1
            else:
                self.summary.updated += 1
        from .cache import exit_groups

        with self.manifest.transaction():  # records and their exit rows, or none of them
            self.manifest.upsert(records)
            for path in done:
                self.manifest.set_exits(path, *exit_groups([row for row in rows if row["path"] == path]))
        self.summary.units_encoded += len(rows)
        self.summary.blocks_run += sum(row["exit_block"] for row in rows)
        self.summary.blocks_full += sum(row["depth"] for row in rows)
        self.summary.cache_bytes += sum(len(row["cache"]) for row in rows if row["cache"])
        self.wrote = True
        self.pending_units, self.pending_files = [], {}

    def _row(self, entry: FileEntry, content_hash: str, unit, result) -> dict:
        return {
            "id": _unit_id(entry.path, unit.chunk), "path": entry.path, "root": entry.root,
            "hash": content_hash, "chunk": unit.chunk, "modality": unit.modality,
            "snippet": unit.snippet[:SNIPPET_CHARS], "size": entry.size, "mtime_ns": entry.mtime_ns,
            "model": self.model_name, "vector": result.vector.tolist(),
            "exit_block": result.exit_block, "depth": result.depth, "refined": result.refined,
            "cache": result.cache, "adapter_version": result.adapter_version, "indexed_at": time.time(),
        }

    def _finish_failed(self, entry: FileEntry, content_hash, modality, reason: str) -> None:
        self._drop_rows(entry.path)
        self.manifest.upsert([FileRecord(entry.path, entry.root, entry.size, entry.mtime_ns,
                                         content_hash, modality, "error", reason, 0)])
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


def _unit_id(path: str, chunk: int) -> str:
    from .store import unit_id

    return unit_id(path, chunk)


def _one_line(error: Exception) -> str:
    from .models.base import DecodeError

    message = first_line(error)
    return message if isinstance(error, DecodeError) else f"{type(error).__name__}: {message}"
