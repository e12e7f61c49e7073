"""The keyword side of a query, and how it is fused with the vector side.

Keyword search is LanceDB's own full-text index (BM25) over each unit's `words` (the path from the
root down, split into words, and the unit's text) and `name` (the file name's words): see
storage/table.py.  It finds what embeddings miss: an identifier, an invoice number, a person's
name, the word in `IMG_kayak_2019.jpg`.

Fusion is reciprocal rank fusion over files: a file's fused score is the sum, over the rankings
that contain it, of 1 / (RRF_K + rank).  RRF needs no calibration between a cosine and a BM25
score, which have nothing in common, and a file that one side ranks first and the other misses
still comes out on top.  Reported `score` in hybrid mode is that sum divided by its largest
possible value (first in both rankings), so 1.0 is the best a file can get;
`similarity` (cosine) and `keyword_score` (BM25, or null) are given beside it.
"""

from __future__ import annotations

from recall_cli.early_exit.candidates import COLUMNS
from recall_cli.query.language import KeywordQuery

RRF_K = 60  # the constant of Cormack et al. (2009): damps the weight of the first few ranks


def fts_query(keyword: KeywordQuery):
    """The lancedb full-text query for `keyword` (None when it has nothing to look for).  Built
    from query objects, never from a query string, so that `"`, `*`, `:` or `(` in what a person
    typed are words to look for, not syntax."""
    from lancedb.query import BooleanQuery, FullTextOperator, MatchQuery, Occur, PhraseQuery

    clauses = []
    if keyword.words.strip():
        clauses.append((Occur.SHOULD, MatchQuery(keyword.words, "words")))
    clauses += [(Occur.MUST, PhraseQuery(phrase, "words")) for phrase in keyword.phrases]
    clauses += [(Occur.MUST, MatchQuery(name, "name", operator=FullTextOperator.AND)) for name in keyword.names]
    if not clauses:
        return None
    if len(clauses) == 1 and clauses[0][0] == Occur.SHOULD:
        return clauses[0][1]
    return BooleanQuery(clauses)


def keyword_ranking(store, keyword: KeywordQuery, limit: int, where: str | None) -> list[dict]:
    """Files matching `keyword`, best BM25 first: one entry per file (its best unit), with that
    unit's stored `vector` for with_similarity.  Needs no query vector, so it runs while the query
    is being embedded."""
    query = fts_query(keyword)
    if query is None:
        return []
    best: dict[str, dict] = {}
    for row in store.keyword_search(query, limit, where, extra=COLUMNS):  # what refinement needs too
        if row["path"] not in best or row["keyword_score"] > best[row["path"]]["keyword_score"]:
            best[row["path"]] = row
    return sorted(best.values(), key=lambda row: -row["keyword_score"])


def with_similarity(ranked: list[dict], query_vector) -> list[dict]:
    """The keyword ranking with each file's cosine `similarity` to the query vector (None without
    one), from the stored vector of its best unit."""
    out = []
    for row in ranked:
        vector = row.get("vector")
        similarity = None if query_vector is None or vector is None else float(query_vector @ vector)
        out.append({**{key: value for key, value in row.items() if key != "vector"}, "similarity": similarity})
    return out


def fuse(vector_ranked: list[dict], keyword_ranked: list[dict]) -> list[dict]:
    """Files of both rankings (each a list of per-file results, best first) in fused order, with
    `score` (normalised RRF, see the module docstring), `similarity` and `keyword_score`.

    The vector ranking is taken over every candidate, those the keyword side brought included
    (ranked by their stored vector's similarity): a file that only the keyword side found still
    has a place in the vector ranking, so it is not tied with the vector side's first file but
    ahead of it, as it should be when it is the one file holding the word asked for."""
    fused: dict[str, dict] = {row["path"]: {**row, "keyword_score": None} for row in vector_ranked}
    for row in keyword_ranked:
        fused.setdefault(row["path"], dict(row))["keyword_score"] = row["keyword_score"]
    by_similarity = sorted(
        (row for row in fused.values() if row.get("similarity") is not None), key=lambda row: -row["similarity"]
    )
    rrf = dict.fromkeys(fused, 0.0)
    for ranking in (by_similarity, keyword_ranked):
        for rank, row in enumerate(ranking, 1):
            rrf[row["path"]] += 1.0 / (RRF_K + rank)
    best_possible = 2.0 / (RRF_K + 1)

    def similarity(row: dict) -> float:  # ties go to the closer meaning; unknown counts as farthest
        return -1.0 if row.get("similarity") is None else row["similarity"]

    ordered = sorted(fused.values(), key=lambda row: (-rrf[row["path"]], -similarity(row)))
    return [{**row, "score": round(rrf[row["path"]] / best_possible, 6)} for row in ordered]
