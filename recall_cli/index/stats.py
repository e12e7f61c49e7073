"""`recall stats`: what is indexed and how.  Reads only the manifest (no lancedb, no torch)."""

from __future__ import annotations

from pathlib import Path

from recall_cli.index.precision import stored_precision
from recall_cli.paths import json_safe
from recall_cli.storage.layout import directory_bytes, table_files
from recall_cli.storage.manifest import SCHEMA_VERSION, Manifest


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
            "precision": stored_precision(manifest),
            "roots": counts["roots"],
            "files": sum(counts["by_status"].values()),
            "files_by_status": {status: counts["by_status"].get(status, 0) for status in ("ok", "error", "skipped")},
            "by_modality": counts["by_modality"],
            "units": sum(entry["units"] for entry in counts["by_modality"].values()),
            "disk_bytes": directory_bytes(db_dir),
            "table": table_files(db_dir),
            "last_index_at": float(last) if last else None,
            "failures": [json_safe({"path": path, "error": error}) for path, error in manifest.failures()],
            "media": {
                **manifest.media_counts(),
                "notes": [json_safe({"path": path, "note": note}) for path, note in manifest.media_notes()],
            },
            "early_exit": early_exit_stats(manifest),
            "healing": healing_stats(db_dir),
            "calibration": calibration_stats(manifest),
        }
    finally:
        manifest.close()


def healing_stats(db_dir: Path) -> dict:
    """Adapter version in use and coarse rows made with other adapters (opens the vector store
    only for a healed index)."""
    from recall_cli.storage.layout import current_version

    version = current_version(db_dir)
    if not version:
        return {"adapter_version": 0, "stale": 0}
    from recall_cli.early_exit.heal_run import stale_count

    return {"adapter_version": version, "stale": stale_count(db_dir)}


def calibration_stats(manifest: Manifest) -> dict | None:
    """How the index calibrated its exits on its first files (early_exit/calibrate.py): status
    (collecting, healing, deferred, rejected, done), the reason when exits are not used, sample
    size, time spent, per-exit held-out cosine to full depth and the exits enabled."""
    from recall_cli.early_exit.calibrate import read_calibration

    return read_calibration(manifest)


def early_exit_stats(manifest: Manifest) -> dict:
    """Exit-block histogram, encoder compute skipped against full depth (block-weighted: each unit
    counts exit_block of depth blocks), INT4 cache bytes against the budget, rows waiting for
    refinement.  From the manifest's unit_exits table (no lancedb)."""
    from recall_cli.early_exit.cache import DEFAULT_BUDGET, resolve_budget

    histogram: dict[str, dict[str, int]] = {}
    depths: dict[str, int] = {}
    run = full = units = refined = cache_units = cache_bytes = 0
    for modality, exit_block, depth, n, n_refined, n_cached, n_bytes in manifest.exit_summary():
        key = modality or "?"
        histogram.setdefault(key, {})[str(exit_block)] = histogram.get(key, {}).get(str(exit_block), 0) + n
        depths[key] = max(depths.get(key, 0), depth)
        run += exit_block * n
        full += depth * n
        units += n
        refined += n_refined
        cache_units += n_cached
        cache_bytes += n_bytes
    try:
        budget = resolve_budget(manifest)
    except Exception:  # a bad $RECALL_CACHE_BUDGET must not break stats
        budget = DEFAULT_BUDGET
    return {
        "full_depth_index": manifest.get_meta("full_depth") == "1",
        "exit_histogram": histogram,
        "depth": depths,
        "units": units,
        "blocks_run": run,
        "blocks_full": full,
        "compute_skipped": (1 - run / full) if full else 0.0,
        "waiting_refinement": units - refined,
        "cache_units": cache_units,
        "cache_bytes": cache_bytes,
        "cache_budget": budget,
        "cache_bytes_per_unit": (cache_bytes / cache_units) if cache_units else 0.0,
    }
