"""Rows an index run can reuse instead of encoding a file: a file whose content is already indexed
under another path (moved, renamed, copied) takes a copy of those rows."""

from __future__ import annotations

import time

from recall_cli.index.media import media_facts
from recall_cli.index.scan import FileEntry
from recall_cli.models import TEXT_ONLY_MODELS
from recall_cli.storage.manifest import FileRecord


def copy_rows(run, entry: FileEntry, content_hash: str, modality: str) -> bool:
    """Copy the rows of the same content under another path to `entry` (one commit in the table,
    one transaction in the manifest); False when there are none to copy.  Not for media indexed
    through its text side: that text holds the file's name."""
    if modality != "text" and run.model_name in TEXT_ONLY_MODELS:
        return False
    from recall_cli.storage.manifest import exit_groups
    from recall_cli.storage.schema import unit_id

    for source in run.manifest.paths_with_hash(content_hash):
        if source == entry.path:
            continue
        rows = run.store.rows_for_path(source)
        if not rows or any(row["hash"] != content_hash for row in rows):
            continue
        for row in rows:
            row.pop("_distance", None)
            row.update(
                id=unit_id(entry.path, row["chunk"]),
                path=entry.path,
                root=entry.root,
                size=entry.size,
                mtime_ns=entry.mtime_ns,
                indexed_at=time.time(),
            )
        run.store.upsert(rows, whole_files=[entry.path])  # its older rows go in the same commit
        record = FileRecord(
            entry.path, entry.root, entry.size, entry.mtime_ns, content_hash, modality, "ok", None, len(rows)
        )
        with run.manifest.transaction():  # the record and its exit rows, or neither
            run.manifest.upsert([record])
            run.manifest.set_exits(entry.path, *exit_groups(rows))
            run.manifest.set_media_facts(media_facts(rows[:1]))
        run.summary.moved += 1
        run.wrote = True
        return True
    return False
