"""Speculative retrieval, steps 1-2 (refine.py's docstring tells the whole method): the candidates of
a query, taken from every exit group on its own so that shallow and deep exits both get a fair
share, merged in the order they deserve refinement."""

from __future__ import annotations

import math

import numpy as np

from recall_cli.storage.sqlfilter import sql_str

POOL_PER_RESULT, POOL_MIN, EXACT_WIDEN = 4, 32, 4
COLUMNS = ("id", "vector", "hash", "size")  # beside the store's usual columns: what refinement needs


def exit_group_clauses(manifest, modality: str | None = None) -> list[tuple[str, int]]:
    """(where clause, size) of each exit group (see the module docstring), from the manifest."""
    groups: list[tuple[str, int]] = []
    refined_total = 0
    for mod, exit_block, _depth, units, refined, _cu, _cb in manifest.exit_summary():
        if modality and mod != modality:
            continue
        refined_total += int(refined or 0)
        waiting = int(units or 0) - int(refined or 0)
        if waiting > 0:
            clause = f"exit_block = {int(exit_block)} AND NOT refined"
            if mod:
                clause = f"modality = {sql_str(mod)} AND " + clause
            groups.append((clause, waiting))
    if refined_total:
        groups.append(("refined", refined_total))
    return groups


def group_share(sizes: list[int], wanted: int, pool: int) -> list[int]:
    """k_g = min(n_g, max(wanted, ceil(pool * n_g / N)))."""
    total = max(sum(sizes), 1)
    return [min(n, max(wanted, math.ceil(pool * n / total))) for n in sizes]


def _and(*clauses) -> str | None:
    parts = [f"({c})" for c in clauses if c]
    return " AND ".join(parts) or None


def select_candidates(
    store, manifest, query_vector, wanted: int, where: str | None, modality: str | None = None, exact: bool = False
) -> list[dict]:
    """Merged candidates (dicts with the store's columns, vector, score, group, group_rank,
    share), in refinement priority order (module docstring, steps 1-2)."""
    groups = exit_group_clauses(manifest, modality)
    if not groups:  # no exit records (an old index): one group
        groups = [("", store.count())]
    q = np.asarray(query_vector, dtype=np.float32)
    pool = max(POOL_PER_RESULT * wanted, POOL_MIN) * (EXACT_WIDEN if exact else 1)
    while True:
        shares = group_share([n for _, n in groups], wanted, pool)
        merged: dict[str, dict] = {}
        for group, ((clause, size), share) in enumerate(zip(groups, shares, strict=True)):
            if share <= 0:
                continue
            known = None if where else size  # the rows the group's clause leaves, from the manifest
            rows = store.search(q, share, _and(where, clause), extra=COLUMNS, exact=exact, matching=known)
            for row in rows:
                row["vector"] = np.asarray(row["vector"], dtype=np.float32)
                row["score"] = float(row["vector"] @ q)  # one formula for stored and fine vectors
            rows.sort(key=lambda r: -r["score"])
            for rank, row in enumerate(rows):
                row.update(group=group, group_rank=rank, share=share)
                merged.setdefault(row["id"], row)
        files = {row["path"] for row in merged.values()}
        exhausted = all(share >= size for (_, size), share in zip(groups, shares, strict=True))
        if len(files) >= wanted or exhausted:
            break
        pool *= 2
    return sorted(merged.values(), key=lambda r: (r["group_rank"] / r["share"], -r["score"]))
