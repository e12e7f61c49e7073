"""Speculative retrieval, steps 1-2 (refine.py's docstring tells the whole method): the candidates of
a query, taken from every exit group on its own so that shallow and deep exits both get a fair
share, merged, and the waiting ones a first pass refines (`to_refine`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from recall_cli.storage.sqlfilter import sql_str

POOL_PER_RESULT, POOL_MIN, EXACT_WIDEN = 4, 32, 4
COLUMNS = ("id", "vector", "hash", "size")  # beside the store's usual columns: what refinement needs
# Once one group is searched exactly, every group shares that scan: LanceDB's flat search reads
# every vector of the table whatever its filter leaves (about 100 ms at 100,000 rows, each).  A group
# that gets fewer rows than its share from the shared scan (its scores run lower than the others')
# is searched on its own.
SHARED_SCAN_MARGIN = 2.0
# A first pass refines the best waiting rows by coarse score, across exit groups (after a hybrid
# query's best keyword hits: to_refine), up to max(REFINE_AT_MOST, REFINE_PER_RESULT x wanted).
# Measured (benchmarks/bench_calibrate_query.py, MiniLM healed from a 30% sample, 39% of the
# docstrings' blocks skipped): first-pass R@10 0.963 of full on the docstrings and 0.946 on
# networkx's, against 0.916 and 0.919 when the refined rows were each group's best by rank / share
# (25 rows: the shares of two waiting groups).  A per-exit margin for the noisier shallow scores
# moved neither by more than one query.
REFINE_AT_MOST, REFINE_PER_RESULT = 50, 5


class Group(NamedTuple):
    """One exit group: its where clause, its rows (from the manifest), and the same test in Python
    (which rows of a shared scan are its own)."""

    clause: str
    size: int
    member: Callable[[dict], bool]
    waiting: bool = False  # rows with a coarse vector, waiting for refinement


def exit_groups(summary: list[tuple], modality: str | None = None) -> list[Group]:
    """The exit groups (see the module docstring) of the manifest's exit summary
    (Manifest.exit_summary: modality, exit block, depth, units, refined, ...)."""
    groups: list[Group] = []
    refined_total = 0
    for mod, exit_block, _depth, units, refined, _cu, _cb in summary:
        if modality and mod != modality:
            continue
        refined_total += int(refined or 0)
        waiting = int(units or 0) - int(refined or 0)
        if waiting > 0:
            clause = f"exit_block = {int(exit_block)} AND NOT refined"
            if mod:
                clause = f"modality = {sql_str(mod)} AND " + clause
            groups.append(Group(clause, waiting, _waiting_member(mod, int(exit_block)), True))
    if refined_total:
        groups.append(Group("refined", refined_total, lambda row: row["refined"] is True))  # never null: always written
    return groups


def _waiting_member(modality: str | None, exit_block: int) -> Callable[[dict], bool]:
    def member(row: dict) -> bool:
        return (
            row["refined"] is False
            and row["exit_block"] == exit_block
            and (not modality or row["modality"] == modality)
        )

    return member


def group_share(sizes: list[int], wanted: int, pool: int) -> list[int]:
    """k_g = min(n_g, max(wanted, ceil(pool * n_g / N)))."""
    total = max(sum(sizes), 1)
    return [min(n, max(wanted, math.ceil(pool * n / total))) for n in sizes]


def refine_limit(wanted: int) -> int:
    """Rows a first pass refines at most for a page of `wanted` results."""
    return max(REFINE_AT_MOST, REFINE_PER_RESULT * wanted)


def to_refine(candidates: list[dict], at_most: int | None, first: list[dict] = ()) -> list[dict]:
    """The waiting rows to refine, in order: those of `first` (the keyword side's best hits, which
    hybrid fusion also ranks by similarity), then the best waiting candidates by coarse score
    whatever their exit group, `at_most` in all (None: every one, candidates in the merged order).
    A hit left to the coarse order stays coarse when its coarse score is low, and its place in the
    similarity ranking moves its fused rank: on MiniLM healed from a 30% sample, hits refined first
    took the first pass from 0.907 to 0.989 of full MRR@10 on networkx's docstrings and from 0.974
    to 1.000 on the docstrings."""
    chosen = [row for row in first if not row["refined"]]
    ids = {row["id"] for row in chosen}
    waiting = [row for row in candidates if not row["refined"] and row["id"] not in ids]
    if at_most is None:
        return chosen + waiting
    return chosen[:at_most] + sorted(waiting, key=lambda row: -row["score"])[: max(0, at_most - len(chosen))]


def _and(*clauses) -> str | None:
    parts = [f"({c})" for c in clauses if c]
    return " AND ".join(parts) or None


def select_candidates(
    store,
    summary: list[tuple],
    query_vector,
    wanted: int,
    where: str | None,
    modality: str | None = None,
    exact: bool = False,
    refine_at_most: int = 0,
) -> list[dict]:
    """Merged candidates (dicts with the store's columns, vector, score, group, group_rank,
    share), in the order of refine.py's steps 1-2.  `summary`: the manifest's exit summary
    (Manifest.exit_summary).  `refine_at_most`: every waiting group gives at least its best that
    many rows, so that the best waiting rows of the whole index are among the candidates."""
    groups = exit_groups(summary, modality)
    if not groups:  # no exit records (an old index): one group
        groups = [Group("", store.count(), lambda row: True)]
    q = np.asarray(query_vector, dtype=np.float32)
    pool = max(POOL_PER_RESULT * wanted, POOL_MIN) * (EXACT_WIDEN if exact else 1)
    while True:
        shares = group_share([group.size for group in groups], wanted, pool)
        shares = [
            max(share, min(group.size, refine_at_most)) if group.waiting else share
            for group, share in zip(groups, shares, strict=True)
        ]
        merged: dict[str, dict] = {}
        for index, rows in enumerate(_group_rows(store, q, groups, shares, where, exact)):
            for row in rows:
                row["vector"] = np.asarray(row["vector"], dtype=np.float32)
                row["score"] = float(row["vector"] @ q)  # one formula for stored and fine vectors
            rows.sort(key=lambda r: -r["score"])
            for rank, row in enumerate(rows):
                row.update(group=index, group_rank=rank, share=shares[index])
                merged.setdefault(row["id"], row)
        files = {row["path"] for row in merged.values()}
        exhausted = all(share >= group.size for group, share in zip(groups, shares, strict=True))
        if len(files) >= wanted or exhausted:
            break
        pool *= 2
    return sorted(merged.values(), key=lambda r: (r["group_rank"] / r["share"], -r["score"]))


def _group_rows(store, q, groups: list[Group], shares: list[int], where: str | None, exact: bool) -> list[list[dict]]:
    """The best `share` rows of every group (by the store's search), the same rows whether a group
    is searched on its own or its rows come from the one exact scan that every group shares once
    any of them is scanned exactly."""
    flat = _scanned_exactly(store, groups, shares, where, exact)
    # The scan reads every vector of the table whatever its filter, so once one group is scanned
    # the groups that would go through the vector index ride along: their best rows come from the
    # same pass, exactly, instead of costing a search of their own.
    scanned = [index for index, share in enumerate(shares) if share > 0] if any(flat) else []
    found: dict[int, list[dict]] = {}
    if len(scanned) > 1:
        shared = _shared_scan(
            store, q, [groups[index] for index in scanned], [shares[index] for index in scanned], where
        )
        found = {scanned[position]: rows for position, rows in shared.items()}
    out = []
    for index, (group, share) in enumerate(zip(groups, shares, strict=True)):
        if share <= 0:
            out.append([])
        elif index in found:
            out.append(found[index])
        else:
            known = None if where else group.size
            clause = _and(where, group.clause)
            out.append(store.search(q, share, clause, extra=COLUMNS, exact=exact or flat[index], matching=known))
    return out


def _scanned_exactly(store, groups: list[Group], shares: list[int], where: str | None, exact: bool) -> list[bool]:
    """Per group: whether the store searches it exactly (Store.scans_exactly).  A filter the store
    scans exactly is counted once: every group inside it is scanned too."""
    if where and shares and store.scans_exactly(where, exact):
        return [share > 0 for share in shares]
    return [
        share > 0 and store.scans_exactly(_and(where, group.clause), exact, None if where else group.size)
        for group, share in zip(groups, shares, strict=True)
    ]


def _shared_scan(store, q, groups: list[Group], shares: list[int], where: str | None) -> dict[int, list[dict]]:
    """One exact search over the union of `groups`: the rows of each group, at most its share, in
    the scan's order (exact, so a group's first rows in it are its own best), for the groups it
    answers in full (position in `groups` -> rows); the others are left to their own search."""
    union = " OR ".join(f"({group.clause})" for group in groups)
    rows = store.search(q, _shared_limit(groups, shares), _and(where, union), extra=COLUMNS, exact=True)
    complete = len(rows) < _shared_limit(groups, shares)  # every matching row came back
    found = {}
    for position, (group, share) in enumerate(zip(groups, shares, strict=True)):
        own = [dict(row) for row in rows if group.member(row)][:share]
        if complete or len(own) >= share:
            found[position] = own
    return found


def _shared_limit(groups: list[Group], shares: list[int]) -> int:
    """Rows a shared scan asks for: enough that every group's share is in it SHARED_SCAN_MARGIN
    times over if its rows scored like the others' (a group's part of the union is its part of the
    manifest's rows; a filter is taken to keep them in proportion), and never less than the shares."""
    total = sum(group.size for group in groups)
    needed = max(share * total / max(group.size, 1) for group, share in zip(groups, shares, strict=True))
    return max(math.ceil(SHARED_SCAN_MARGIN * needed), sum(shares))
