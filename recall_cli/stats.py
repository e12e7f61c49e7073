"""`recall stats`: what is indexed and how.  Reads only the manifest (no lancedb, no torch)."""

from __future__ import annotations

import time
from pathlib import Path

from .manifest import SCHEMA_VERSION, Manifest
from .paths import directory_bytes


def collect_stats(db_dir: Path) -> dict:
    manifest = Manifest(db_dir, create=False)
    try:
        counts = manifest.counts()
        last = manifest.get_meta("last_index_at")
        return {
            "db": str(db_dir),
            "schema_version": SCHEMA_VERSION,
            "model": manifest.get_meta("model"),
            "model_version": manifest.get_meta("model_version"),
            "dim": int(manifest.get_meta("dim", "0")),
            "roots": counts["roots"],
            "files": sum(counts["by_status"].values()),
            "files_by_status": {status: counts["by_status"].get(status, 0) for status in ("ok", "error", "skipped")},
            "by_modality": counts["by_modality"],
            "units": sum(entry["units"] for entry in counts["by_modality"].values()),
            "disk_bytes": directory_bytes(db_dir),
            "last_index_at": float(last) if last else None,
            "failures": [{"path": path, "error": error} for path, error in manifest.failures()],
        }
    finally:
        manifest.close()


def format_stats(stats: dict) -> str:
    lines = [
        f"index        {stats['db']}",
        f"model        {stats['model']} ({stats['model_version'] or 'not loaded yet'})",
        f"roots        {', '.join(stats['roots']) or '-'}",
        f"files        {stats['files']}  (ok {stats['files_by_status']['ok']}, "
        f"failed {stats['files_by_status']['error']}, skipped {stats['files_by_status']['skipped']})",
    ]
    for modality, entry in sorted(stats["by_modality"].items()):
        lines.append(f"  {modality:<10} {entry['files']} files, {entry['units']} units")
    lines.append(f"disk         {human_bytes(stats['disk_bytes'])}")
    when = stats["last_index_at"]
    lines.append(f"last index   {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(when)) if when else 'never'}")
    if stats["failures"]:
        lines.append("failures (first 20; retry with `recall index --retry-failed`):")
        lines.extend(f"  {item['path']}: {item['error']}" for item in stats["failures"])
    return "\n".join(lines)


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
