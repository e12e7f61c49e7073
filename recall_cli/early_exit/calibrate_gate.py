"""The quality gate of a calibration (calibrate.py): is a healed exit good enough to be used?

What the user sees of an exit is retrieval: with the default refinement a query re-encodes its best
coarse candidates to full depth (at most 50 rows for a top 10), so an exit has to bring the true
top 10 into the top 50; without refinement (`--no-refine`) its own top 10 is the answer.

Two checks, both on the files of the sample held out of training (never seen by the adapters, the
heads or the predictor):
  * held-out cosine: the mean cosine of each held-out unit's exit embedding to its full-depth
    embedding must reach GATE_COSINE ($RECALL_CALIBRATE_GATE).  Measured against the real thing
    (MiniLM, docstrings: a 127-file sample healed for 200 steps, then every exit used on the other
    1,148 files with the benchmark's queries; benchmarks/bench_calibrate_gate.py), this is the
    figure that moves with retrieval: held-out cosines of 0.71-0.74 (exits 1-4) gave a refined
    first pass of 0.66-0.74 of full R@10 and coarse R@10 of 0.34-0.42; 0.78 (exit 5) gave 0.84 and
    0.52.  With a 382-file sample (30%; what MAX_FILES gives a large index) the held-out cosines
    rose to 0.77-0.84: 0.77-0.80 (exits 1-4) gave a first pass of 0.86-0.89 and coarse 0.57-0.66,
    0.84 (exit 5) gave 0.96 and 0.77.  So the gate is 0.83, between the 0.80 that gave 0.89 and
    the 0.84 that gave 0.96: an exit below it would cost the user results the refinement cannot
    bring back.
  * held-out retrieval: each held-out unit's full-depth embedding is a "more like this" query
    (the index has no user queries yet), the other held-out units are the corpus; the truth is the
    query's top k by full-depth embeddings, and the exit must bring a share GATE_CANDIDATES of it
    into its own top CANDIDATE_FACTOR * k (what refinement needs) and GATE_COARSE into its top k
    (what `--no-refine` returns) ($RECALL_CALIBRATE_GATE_CANDIDATES, ..._COARSE).  k is 10 on a large
    held-out corpus and smaller on a small one (the candidate list stays at most half the corpus).
    On a held-out corpus of a few dozen units this is easy (0.90-0.98 in the measurement above,
    where the real first pass was 0.66-0.84): it catches a broken exit, it does not prove a good
    one, which is why the cosine rule stays.
"""

from __future__ import annotations

import os

CANDIDATE_FACTOR = 5
TOP_K = 10
GATE_CANDIDATES = 0.85
GATE_COARSE = 0.45
GATE_COSINE = 0.83


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
