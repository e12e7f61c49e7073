"""Checks of an index's integrity shared by the interruption and concurrency tests: rows and
manifest agree, no duplicate or half-written row, the index opens and answers."""

from __future__ import annotations

import json
import math
import os
import sqlite3
from pathlib import Path

from conftest import Cli

from recall_cli.index.hashing import file_hash
from recall_cli.models import load_model
from recall_cli.storage.schema import unit_id
from recall_cli.storage.table import Store

DIM = 384  # minilm


class Index:
    """What the test can see of one index: the manifest (read-only) and the LanceDB rows."""

    def __init__(self, db: Path):
        self.db = db

    def manifest(self) -> dict[str, dict]:
        if not (self.db / "manifest.sqlite").exists():
            return {}
        conn = sqlite3.connect(self.db / "manifest.sqlite")
        try:
            conn.row_factory = sqlite3.Row
            return {row["path"]: dict(row) for row in conn.execute("SELECT * FROM files")}
        finally:
            conn.close()

    def exits(self) -> dict[str, tuple[int, int, int]]:
        """path -> (units, cache_units, cache_bytes) summed over the file's exit records."""
        conn = sqlite3.connect(self.db / "manifest.sqlite")
        try:
            return {
                path: (units, cache_units, cache_bytes)
                for path, units, cache_units, cache_bytes in conn.execute(
                    "SELECT path, sum(units), sum(cache_units), sum(cache_bytes) FROM unit_exits GROUP BY path"
                )
            }
        finally:
            conn.close()

    def rows(self) -> list[dict] | None:
        """Every row (None when the table does not exist yet)."""
        if not (self.db / "units.lance").exists():
            return None
        table = Store(self.db).table  # as a query opens it
        return None if table is None else table.to_arrow().to_pylist()


def versions(db: Path) -> int:
    """LanceDB commits so far (version manifests)."""
    try:
        return sum(name.endswith(".manifest") for name in os.listdir(db / "units.lance" / "_versions"))
    except FileNotFoundError:
        return 0


def recorded(db: Path) -> int:
    """Files the manifest holds (polled while the indexer writes; read-only, never creates it)."""
    path = db / "manifest.sqlite"
    if not path.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.2)
        try:
            return conn.execute("SELECT count(*) FROM files").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:  # not created yet, or busy for a moment
        return -1


def disk_files(*roots: Path) -> dict[str, os.stat_result]:
    return {str(path): path.stat() for root in roots for path in root.rglob("*") if path.is_file()}


class Checker:
    """The invariants of an index after any kill (see check()); `roots`: what it indexes."""

    def __init__(self, db: Path, *roots: Path):
        self.db, self.roots, self.index, self.cli = db, roots, Index(db), Cli(db)
        self.model = load_model("minilm")
        self._chunks: dict[str, int] = {}

    def chunks(self, path: str) -> int:
        """Chunks the current content of `path` has (by content hash)."""
        key = file_hash(path)
        if key not in self._chunks:
            self._chunks[key] = len(self.model.file_units(Path(path), "text"))
        return self._chunks[key]

    def complete(self, manifest: dict[str, dict], disk: dict[str, os.stat_result]) -> dict[str, dict]:
        """Files the index holds in their current state: a manifest record whose size and mtime
        match the file (what `recall index` trusts without reading the file)."""
        return {
            path: record
            for path, record in manifest.items()
            if path in disk and record["size"] == disk[path].st_size and record["mtime_ns"] == disk[path].st_mtime_ns
        }

    def snapshot(self) -> dict:
        """Before a run: the complete files, their manifest records and their rows' write times."""
        manifest, disk = self.index.manifest(), disk_files(*self.roots)
        complete = self.complete(manifest, disk)
        rows = self.index.rows() or []
        written = {}
        for row in rows:
            if row["path"] in complete:
                written.setdefault(row["path"], []).append((row["chunk"], row["indexed_at"]))
        return {
            "manifest": manifest,
            "complete": complete,
            "disk": disk,
            "written": {path: sorted(times) for path, times in written.items()},
        }

    def check(self, before: dict | None = None) -> dict:
        """After a run, killed or not.  Returns a few counts for the trial log."""
        manifest, disk = self.index.manifest(), disk_files(*self.roots)
        rows = self.index.rows()
        # the index opens and answers
        stats = self.cli("stats", "--json")
        assert stats.exit_code in (0, 2) and "Traceback" not in stats.stderr, stats.stderr
        query = self.cli("query", "topic 7 kayak", "-n", "3", "--json", "--no-refine")
        assert "Traceback" not in query.stderr, query.stderr
        if rows:
            assert stats.exit_code == 0, stats.stderr
            assert query.exit_code == 0, query.stderr
            found = {result["path"] for result in json.loads(query.stdout)}
            assert found and found <= {row["path"] for row in rows}
        else:  # killed before anything was embedded: the query says what to do
            assert query.exit_code in (1, 2), query.stderr
            assert query.exit_code == 1 or "recall index" in query.stderr, query.stderr
        rows = rows or []

        # no duplicate rows, no half-written row
        ids = [row["id"] for row in rows]
        assert len(ids) == len(set(ids)), "duplicate ids"
        by_path: dict[str, list[dict]] = {}
        for row in rows:
            assert row["id"] == unit_id(row["path"], row["chunk"]), row["id"]
            assert row["hash"] and row["model"] == "minilm" and row["modality"] == "text"
            assert row["snippet"] and row["size"] is not None and row["mtime_ns"] is not None
            vector = row["vector"]
            assert vector is not None and len(vector) == DIM and all(math.isfinite(x) for x in vector)
            assert abs(math.sqrt(sum(x * x for x in vector)) - 1.0) < 1e-3
            assert 1 <= row["exit_block"] <= row["depth"]
            assert row["refined"] or row["cache"], "a coarse row without its activation cache"
            by_path.setdefault(row["path"], []).append(row)
        # every file's rows are one whole version of it: chunks 0..k-1, one hash
        for path, file_rows in by_path.items():
            chunks = sorted(row["chunk"] for row in file_rows)
            hashes = {row["hash"] for row in file_rows}
            assert chunks == list(range(len(chunks))), f"{path}: chunks {chunks}"
            assert len(hashes) == 1, f"{path}: rows of two versions {hashes}"
        # manifest and table agree.  A complete file (record matches the file on disk) has exactly
        # its rows; other rows are work done before the kill that the manifest does not show yet
        # (the manifest is only ever behind): the whole current file, or its recorded version
        complete = self.complete(manifest, disk)
        exits = self.index.exits() if manifest else {}
        for path, record in complete.items():
            if record["status"] != "ok":
                assert record["status"] == "skipped" and path.endswith(".bin") and path not in by_path
                continue
            file_rows = by_path.get(path, [])
            assert record["hash"] == file_hash(path), f"{path}: recorded hash is not the file's"
            assert len(file_rows) == record["units"] == self.chunks(path), f"{path}: rows vs manifest"
            assert {row["hash"] for row in file_rows} == {record["hash"]}
            cache = [row["cache"] for row in file_rows if row["cache"]]
            assert exits.get(path) == (record["units"], len(cache), sum(map(len, cache))), (
                f"{path}: exit records {exits.get(path)} vs rows"
            )
        for path, file_rows in by_path.items():
            if path in complete:
                continue
            record, content = manifest.get(path), file_rows[0]["hash"]
            if path in disk and content == file_hash(path):
                assert len(file_rows) == self.chunks(path), f"{path}: part of a file"
            elif record is not None:  # the recorded version, about to be replaced or pruned
                assert record["status"] == "ok" and content == record["hash"] and len(file_rows) == record["units"]
            else:
                raise AssertionError(f"{path}: rows of a file the index never recorded")
        for path, record in manifest.items():
            if path not in disk:  # deleted or renamed: rows go first, then the record
                assert record["status"] != "ok" or path not in by_path or len(by_path[path]) == record["units"]

        # what was complete before the run was left alone: not re-encoded, not rewritten
        for path, record in (before or {"complete": {}})["complete"].items():
            if path not in disk or disk[path].st_mtime_ns != before["disk"][path].st_mtime_ns:
                continue
            assert manifest.get(path) == record, f"{path}: a complete file was processed again"
            times = sorted((row["chunk"], row["indexed_at"]) for row in by_path.get(path, []))
            assert times == before["written"].get(path, []), f"{path}: a complete file was re-encoded"
        return {"rows": len(rows), "complete": len(complete), "files": len(disk)}

    def expected_summary(self, before: dict) -> dict:
        """The counts a run that completes must report, from the state before it."""
        manifest, disk = before["manifest"], before["disk"]
        known_ok = {record["hash"]: path for path, record in manifest.items() if record["status"] == "ok"}
        counts = {"unchanged": 0, "added": 0, "updated": 0, "moved": 0, "skipped": 0, "failed": 0}
        encoded = []
        for path in disk:
            record = manifest.get(path)
            if path in before["complete"] or (
                record is not None and record["hash"] == file_hash(path) and record["status"] != "error"
            ):
                counts["unchanged"] += 1
            elif path.endswith(".bin"):
                counts["skipped"] += 1
            elif file_hash(path) in known_ok:
                counts["moved"] += 1
            else:
                counts["added" if record is None else "updated"] += 1
                encoded.append(path)
        counts["removed"] = sum(1 for path in manifest if path not in disk)
        counts["scanned"] = len(disk)
        counts["units_encoded"] = sum(self.chunks(path) for path in encoded)
        return counts
