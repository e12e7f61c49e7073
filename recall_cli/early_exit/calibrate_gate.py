"""The quality gate of a calibration (calibrate.py): is a healed exit good enough to be used?

What the user sees of an exit is retrieval: with the default refinement a query re-encodes its best
coarse candidates to full depth (at most 50 rows for a top 10), so an exit has to bring the true
top 10 into the top 50; without refinement (`--no-refine`) its own top 10 is the answer.

Two checks, both on the files of the sample held out of training (never seen by the adapters, the
heads or the predictor):
  * held-out cosine: the mean cosine of each held-out unit's exit embedding to its full-depth
    embedding must reach GATE_COSINE ($RECALL_CALIBRATE_GATE).  It tells a healed exit from a
    broken one: MiniLM's exits before healing sit at 0.09-0.28 (docstrings, blocks 1-5), healed from
    a 10% sample (128 files) at 0.70-0.78.  It does not have to prove retrieval on its own, because
    a default query refines what it shows: with every one of those exits in use, a default (hybrid)
    query's first pass, which refines the keyword side's best hits and then the best coarse rows,
    reached 0.97-0.98 of full depth's R@10 and MRR@10 on the docstrings and on 600 networkx
    docstrings the sample never saw (coarse only, `--no-refine`: 0.94 and 0.87 of full R@10;
    benchmarks/results/calibrate.md).  A semantic-only ranking is weaker on the same exits (first
    pass 0.85-0.92 of full R@10, benchmarks/bench_calibrate_query.py), which is why the gate was
    0.83 before queries refined their keyword hits first; a row reaches full depth once a query has
    refined it.  So the gate is 0.6: below every healed exit measured, far above an unhealed one.
  * held-out retrieval: each held-out unit's full-depth embedding is a "more like this" query
    (the index has no user queries yet), the other held-out units are the corpus; the truth is the
    query's top k by full-depth embeddings, and the exit must bring a share GATE_CANDIDATES of it
    into its own top CANDIDATE_FACTOR * k (what refinement needs) and GATE_COARSE into its top k
    (what `--no-refine` returns) ($RECALL_CALIBRATE_GATE_CANDIDATES, ..._COARSE).  k is 10 on a large
    held-out corpus and smaller on a small one (the candidate list stays at most half the corpus).
    On a held-out corpus of a few dozen units this is easy (0.96-0.99 for the exits above): it
    catches a broken exit, it does not prove a good one.
"""

from __future__ import annotations

import os

CANDIDATE_FACTOR = 5
TOP_K = 10
GATE_CANDIDATES = 0.85
GATE_COARSE = 0.45
GATE_COSINE = 0.6


def heldout_k(units: int) -> int:
    """k of the held-out retrieval on a corpus of `units` (each query leaves itself out)."""
    return max(1, min(TOP_K, (units - 1) // (2 * CANDIDATE_FACTOR)))


def heldout_retrieval(exit_embeddings, teacher, held: list[int]) -> dict:
    """{"k", "candidates", "coarse"} of one exit on the held-out units (see the module docstring).
    `exit_embeddings` and `teacher`: [n, dim] unit-norm tensors over the whole sample."""
    import torch

    if len(held) < 3:
        return {"k": 0, "m": 0, "candidates": 0.0, "coarse": 0.0}
    queries = teacher[held].float()
    full_scores = queries @ teacher[held].float().T
    exit_scores = queries @ exit_embeddings[held].float().T
    itself = torch.eye(len(held), dtype=torch.bool)
    full_scores = full_scores.masked_fill(itself, float("-inf"))
    exit_scores = exit_scores.masked_fill(itself, float("-inf"))
    k = heldout_k(len(held))
    candidates = min(CANDIDATE_FACTOR * k, len(held) - 1)
    truth = full_scores.topk(k, dim=1).indices
    ranked = exit_scores.topk(candidates, dim=1).indices
    return {
        "k": k,
        "m": candidates,
        "candidates": _share_found(truth, ranked),
        "coarse": _share_found(truth, ranked[:, :k]),
    }


def _share_found(truth, ranked) -> float:
    found = (truth[:, :, None] == ranked[:, None, :]).any(dim=2)
    return float(found.float().mean())


class Gate:
    """Which exits pass; thresholds from the environment (calibrate.CalibrationOptions.from_env)."""

    def __init__(self):
        env = os.environ.get
        self.candidates = float(env("RECALL_CALIBRATE_GATE_CANDIDATES") or GATE_CANDIDATES)
        self.coarse = float(env("RECALL_CALIBRATE_GATE_COARSE") or GATE_COARSE)
        self.cosine = float(env("RECALL_CALIBRATE_GATE") or GATE_COSINE)

    def passes(self, retrieval: dict, cosine: float) -> bool:
        if cosine < self.cosine:
            return False
        return retrieval["candidates"] >= self.candidates and retrieval["coarse"] >= self.coarse

    def reason(self, modality: str, per_exit: dict[int, dict], cosine: dict[int, float]) -> str:
        """One line: why no exit of `modality` passed (the best exit's figures)."""
        best = max(per_exit, key=lambda e: (cosine[e], per_exit[e]["candidates"]))
        figures = per_exit[best]
        return (
            f"{modality}: no exit reached held-out cosine {self.cosine:.2f} with top-{figures['k']} in "
            f"top-{figures['m']} >= {self.candidates:.2f} and in top-{figures['k']} >= {self.coarse:.2f} "
            f"(best: block {best} at cosine {cosine[best]:.3f}, {figures['candidates']:.2f} / {figures['coarse']:.2f})"
        )
