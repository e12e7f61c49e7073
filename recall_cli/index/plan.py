"""Phase 1 of an index run: which files are new or changed, and which are gone.  Stat only (no
hashing, no lancedb, no torch), so an unchanged tree costs one `stat` per file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from recall_cli.index.scan import FileEntry, ScanReport
from recall_cli.storage.manifest import FileRecord, Manifest


def files_to_apply(
    entries: list[FileEntry], known: dict[str, FileRecord], retry_failed: bool = False
) -> list[tuple[FileEntry, FileRecord | None]]:
    """The entries whose size or mtime differ from the manifest (with their record, if any); a file
    that failed last time is tried again only when asked (`--retry-failed`); a photo, song or video
    recorded before media text (an older index) once, to gain it."""
    todo = []
    for entry in entries:
        record = known.get(entry.path)
        unchanged = record is not None and record.size == entry.size and record.mtime_ns == entry.mtime_ns
        if not unchanged or (retry_failed and record.status == "error") or record.stale_media_text:
            todo.append((entry, record))
    return todo


def gone_paths(known, present, problems: list[tuple[str, str]]) -> list[str]:
    """Recorded paths no longer present, except those inside a folder that could not be read:
    those are not known to be gone."""
    unreadable = [path for path, _ in problems]
    return sorted(path for path in known if path not in present and not _inside_any(path, unreadable))


def _inside_any(path: str, folders: list[str]) -> bool:
    return any(path == folder or path.startswith(folder + "/") for folder in folders)


@dataclass
class PathChanges:
    """What a set of changed paths (watch events) means for the index."""

    report: ScanReport = field(default_factory=ScanReport)
    entries: list[FileEntry] = field(default_factory=list)
    known: dict[str, FileRecord] = field(default_factory=dict)
    gone: list[str] = field(default_factory=list)
    roots: list[str] = field(default_factory=list)  # the roots still present (problems are filed under them)


def changes_at_paths(manifest: Manifest, paths: list[str], path_filter) -> PathChanges:
    """Each path is stat'ed: a file is planned as usual, a directory is walked (recorded files under
    it that are gone are gone), an absent path takes everything recorded under it with it.  Paths
    under a root that is missing are left alone: an unmounted drive is never "all deleted"."""
    changes = PathChanges()
    entries: dict[str, FileEntry] = {}
    gone: set[str] = set()
    live_roots = {root for root in path_filter.roots if os.path.isdir(root)}
    for path in sorted(set(paths)):
        root = path_filter.root_of(path)
        if root is None or root not in live_roots:
            continue
        recorded = manifest.files_under([path]) | manifest.records([path])
        changes.known.update(recorded)
        found = _present_at(path, path_filter, changes.report)
        entries.update(found)
        gone.update(recorded.keys() - found.keys())
    changes.gone = gone_paths(gone, entries.keys(), changes.report.problems)
    changes.known.update(manifest.records([path for path in entries if path not in changes.known]))
    changes.entries = list(entries.values())
    changes.roots = sorted(live_roots) or path_filter.roots
    return changes


def _present_at(path: str, path_filter, report: ScanReport) -> dict[str, FileEntry]:
    """The indexable files at `path` now: the file itself, or those of the tree under it."""
    try:
        is_dir = os.path.isdir(path) and not os.path.islink(path)
    except OSError:
        is_dir = False
    if is_dir:
        sub = path_filter.walk(path)
        report.problems.extend(sub.problems)
        return {entry.path: entry for entry in sub.files}
    entry = path_filter.file(path, report) if os.path.lexists(path) else None
    return {path: entry} if entry is not None else {}
