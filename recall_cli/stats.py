"""`recall stats`: what is indexed and how.  Reads only the manifest (no lancedb, no torch)."""

from __future__ import annotations

import time
from pathlib import Path

from .manifest import SCHEMA_VERSION, Manifest
from .paths import directory_bytes, display_path, json_safe, printable


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
            "failures": [json_safe({"path": path, "error": error}) for path, error in manifest.failures()],
            "early_exit": early_exit_stats(manifest),
            "healing": healing_stats(db_dir),
        }
    finally:
        manifest.close()


def healing_stats(db_dir: Path) -> dict:
    """Adapter version in use and coarse rows made with other adapters (opens the vector store
    only for a healed index)."""
    from .heal import current_version

    version = current_version(db_dir)
    if not version:
        return {"adapter_version": 0, "stale": 0}
    from .heal_run import stale_count

    return {"adapter_version": version, "stale": stale_count(db_dir)}


def early_exit_stats(manifest: Manifest) -> dict:
    """Exit-block histogram, encoder compute skipped against full depth (block-weighted: each unit
    counts exit_block of depth blocks), INT4 cache bytes against the budget, rows waiting for
    refinement.  From the manifest's unit_exits table (no lancedb)."""
    from .cache import DEFAULT_BUDGET, resolve_budget

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
    except Exception:  # noqa: BLE001 - a bad $RECALL_CACHE_BUDGET must not break stats
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


def format_stats(stats: dict) -> str:
    lines = [
        f"index        {stats['db']}",
        f"model        {stats['model']} ({stats['model_version'] or 'not loaded yet'})",
        f"roots        {', '.join(display_path(root) for root in stats['roots']) or '-'}",
        f"files        {stats['files']}  (ok {stats['files_by_status']['ok']}, "
        f"failed {stats['files_by_status']['error']}, skipped {stats['files_by_status']['skipped']})",
    ]
    for modality, entry in sorted(stats["by_modality"].items()):
        lines.append(f"  {modality:<10} {entry['files']} files, {entry['units']} units")
    lines.append(f"disk         {human_bytes(stats['disk_bytes'])}")
    ee = stats.get("early_exit")
    if ee and ee["units"]:
        mode = "full depth (--full)" if ee["full_depth_index"] else "early exit"
        lines.append(f"encoding     {mode}; {ee['compute_skipped']:.1%} of encoder blocks skipped "
                     f"({ee['blocks_run']} of {ee['blocks_full']} block-units run)")
        for modality, counts in sorted(ee["exit_histogram"].items()):
            bars = ", ".join(f"{exit_block}: {count}" for exit_block, count in
                             sorted(counts.items(), key=lambda item: int(item[0])))
            lines.append(f"  exits {modality:<6} (of {ee['depth'][modality]} blocks)  {bars}")
        lines.append(f"refinement   {ee['waiting_refinement']} units waiting")
        per_unit = f", {human_bytes(int(ee['cache_bytes_per_unit']))} per unit" if ee["cache_units"] else ""
        lines.append(f"cache        {human_bytes(ee['cache_bytes'])} of {human_bytes(ee['cache_budget'])} budget "
                     f"({ee['cache_units']} units{per_unit})")
    healing = stats.get("healing") or {}
    if healing.get("adapter_version"):
        lines.append(f"healing      adapters v{healing['adapter_version']}; {healing['stale']} coarse rows stale "
                     "(refresh: `recall heal --refresh-only`)")
    else:
        lines.append("healing      not healed (exits use full depth until `recall heal`)")
    when = stats["last_index_at"]
    lines.append(f"last index   {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(when)) if when else 'never'}")
    if stats["failures"]:
        lines.append("failures (first 20; retry with `recall index --retry-failed`):")
        lines.extend(f"  {display_path(item['path'])}: {printable(item['error'])}" for item in stats["failures"])
    return "\n".join(lines)


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
