"""The INT4 activation cache's byte budget and release policy.

Cache entries live in the LanceDB `cache` column (quant.py blobs); the manifest's `unit_exits`
table mirrors their sizes per (file, exit block), so the budget is checked without reading blobs.

* Budget: `recall index --cache-budget SIZE` (stored in the index, meta `cache_budget`), else
  $RECALL_CACHE_BUDGET, else DEFAULT_BUDGET = 2 GiB.  For scale: an ImageBind-Huge photo exiting in
  the vision trunk caches 257 tokens x 1280 channels x 0.625 byte = ~206 KB (about 10,000 photos in
  2 GiB); a full 256-token MiniLM chunk ~61 KB.
* Release policy:
  1. a refined row (its fine, full-depth embedding is stored) releases its cache entry: nothing is
     left to resume (`release_refined`; rows indexed at full depth never get one);
  2. over budget, whole (file, exit block) groups are released in this order until the total fits:
     deepest exit first (highest exit_block / depth: its coarse embedding is the closest to the
     fine one, so it is the least likely to need refining, and re-running it from the file costs
     the least extra), then the oldest indexed first.  A released row keeps its coarse embedding;
     refining it later means decoding the file and running it from block 0.
"""

from __future__ import annotations

import os

from recall_cli.storage.manifest import exit_groups

DEFAULT_BUDGET = 2 << 30
BUDGET_ENV = "RECALL_CACHE_BUDGET"
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tb": 1 << 40,
    "tib": 1 << 40,
}


def parse_size(text: str) -> int:
    """'2GiB', '500M', '1048576' -> bytes (binary units)."""
    from recall_cli.errors import RecallError

    raw = str(text).strip().lower().replace(" ", "")
    number = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = raw[len(number) :]
    try:
        value = float(number)
    except ValueError:
        value = -1
    if unit not in _UNITS or value < 0:
        raise RecallError(f"cannot read size {text!r}; use e.g. 2GiB, 500MiB or a number of bytes")
    return int(value * _UNITS[unit])


def resolve_budget(manifest, requested: str | None = None) -> int:
    """The index's cache budget in bytes; a requested size is stored in the index."""
    if requested:
        budget = parse_size(requested)
        manifest.set_meta("cache_budget", str(budget))
        return budget
    stored = manifest.get_meta("cache_budget")
    if stored is not None:
        return int(stored)
    if os.environ.get(BUDGET_ENV):
        return parse_size(os.environ[BUDGET_ENV])
    return DEFAULT_BUDGET


def eviction_order(groups: list[tuple]) -> list[tuple]:
    """groups: (path, exit_block, depth, cache_bytes, indexed_at) -> the order they are released in."""
    return sorted(groups, key=lambda g: (-(g[1] / max(g[2], 1)), g[4] or 0.0, g[0]))


def enforce_budget(store, manifest, budget: int) -> dict:
    """Release cache groups (see the module docstring) until the cache fits in `budget` bytes."""
    from recall_cli.storage.sqlfilter import sql_str

    groups = manifest.cache_groups()
    total = sum(g[3] for g in groups)
    released: list[tuple] = []
    for group in eviction_order(groups):
        if total <= budget:
            break
        released.append(group)
        total -= group[3]
    if released and store.table is not None:
        clauses = [f"(path = {sql_str(path)} AND exit_block = {int(exit_block)})" for path, exit_block, *_ in released]
        for start in range(0, len(clauses), 200):
            store.table.update(where=" OR ".join(clauses[start : start + 200]), values_sql={"cache": "NULL"})
        manifest.release_cache_groups([(path, exit_block) for path, exit_block, *_ in released])
    return {
        "released_groups": len(released),
        "released_bytes": sum(g[3] for g in released),
        "cache_bytes": total,
        "budget": budget,
    }


def release_refined(store, manifest=None) -> int:
    """Rows that are refined but still hold a cache entry release it; returns how many."""
    if store.table is None:
        return 0
    where = "refined AND cache IS NOT NULL"
    count = store.table.count_rows(where)
    if not count:
        return 0
    paths = (
        {row["path"] for row in store.table.search().where(where).select(["path"]).limit(None).to_arrow().to_pylist()}
        if manifest is not None
        else set()
    )
    store.table.update(where=where, values_sql={"cache": "NULL"})
    if manifest is not None:
        for path in paths:
            refresh_exits(store, manifest, path)
    return count


def refresh_exits(store, manifest, path: str) -> None:
    """Recompute one file's exit records from its rows in the store (after a refinement)."""
    rows = store.rows_for_path(path)
    modality, groups = exit_groups(rows)
    manifest.set_exits(path, modality, groups)
